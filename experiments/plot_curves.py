"""Convergence curves of several runs on one figure, as the paper's Figs. 21-26.

    python -m experiments.plot_curves runs/offline_comparison \
        --metric=top1_error,top5_error --x=epoch --out=curves.png

One panel per metric. For a bare metric name, each run's evaluation curve (solid) and
training curve (dashed; the mean over the steps between two logs) share a colour; a
full key such as `eval/ema_top1_error` is drawn as named. Runs are labelled by how
their configs differ. Arguments are run directories or directories of runs. The
"steps to X% top-1 accuracy" table of the runs is printed (see --targets).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from matplotlib.figure import Figure

from experiments import runs as runs_lib
from experiments import summarize
from inception_jax import cli

SPLITS = {'eval': '-', 'train': '--'}  # Line style of each split.
X_AXES = ('step', 'epoch')


def _keys(metric: str) -> list[tuple[str, str]]:
  """(key, line style) pairs to draw for `metric`."""
  if '/' in metric:
    return [(metric, '-')]
  return [(f'{split}/{metric}', style) for split, style in SPLITS.items()]


def plot(runs: Sequence[runs_lib.Run], metrics: Sequence[str], out: str,
         x: str = 'step') -> Figure:
  """Draws `metrics` (one panel each) of `runs` and saves the figure to `out`."""
  if x not in X_AXES:
    raise ValueError(f'--x={x!r} is invalid; valid: {", ".join(X_AXES)}')
  fig = Figure(figsize=(6 * len(metrics), 5.5), layout='constrained')
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  labels = runs_lib.labels(list(runs))
  drawn = False
  for ax, metric in zip(axes, metrics):
    percent = metric.endswith(('_error', '_accuracy'))
    for i, (run, label) in enumerate(zip(runs, labels)):
      for key, style in _keys(metric):
        steps, values = run.series(key)
        if not steps.size:
          continue
        xs = steps / run.steps_per_epoch if x == 'epoch' else steps
        ax.plot(xs, 100 * values if percent else values, style, color=f'C{i}',
                linewidth=1.0 if style == '-' else 0.8, label=f'{label} ({key.split("/")[0]})')
        drawn = True
    ax.set_xlabel(x)
    ax.set_ylabel(f'{metric} (%)' if percent else metric)
    ax.grid(alpha=0.3)
  if not drawn:
    raise ValueError(f'none of the runs logged {", ".join(metrics)}')
  # One legend for all panels, below them, so that no curve is hidden.
  legend = {}
  for ax in axes:
    legend.update(zip(*reversed(ax.get_legend_handles_labels())))
  fig.legend(legend.values(), legend.keys(), loc='outside lower center', fontsize='small',
             ncols=min(2, len(legend)))
  fig.savefig(out, dpi=100)
  return fig


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', help='Run directories or directories of runs.')
  parser.add_argument('--metric', default='top1_error',
                      help='Comma-separated metrics, e.g. top1_error,top5_error,loss.')
  parser.add_argument('--x', default='step', choices=X_AXES)
  parser.add_argument('--out', default='curves.png')
  parser.add_argument('--targets', default='0.5',
                      help='Top-1 accuracies of the "steps to X%%" table, e.g. 0.5,0.7.')
  args = parser.parse_args(argv)
  try:
    runs = runs_lib.find_runs(args.runs)
    targets = summarize.parse_targets(args.targets)
    plot(runs, [m for m in args.metric.split(',') if m], args.out, args.x)
  except cli.USER_ERRORS as e:
    parser.error(str(e))
  rows = summarize.summary_rows(runs, targets, cost=False)
  columns = ['run', 'step'] + [summarize.target_column(t) for t in targets]
  print(summarize.format_markdown([{c: row[c] for c in columns} for row in rows]))
  print(f'Wrote {args.out}')


if __name__ == '__main__':
  main()
