"""Convergence curves of several runs on one figure, as the paper's Figs. 21-26.

    python -m experiments.plot_curves runs/offline_comparison \
        --metric=top1_error,top5_error --x=epoch --out=curves.png

One panel per metric. For a bare metric name, each run's evaluation curve (solid) and
training curve (dashed; the mean over the steps between two logs) share a colour; a
full key such as `eval/ema_top1_error` is drawn as named. Runs are labelled by how
their configs differ. Runs that differ only in their seed are one arm: its mean curve,
with a band from the lowest to the highest seed (`--band=minmax`) or one standard
deviation either side (`--band=std`), over the steps that all its runs logged.
Arguments are run directories or directories of runs. The "steps to X% top-1 accuracy"
table of the runs is printed (see --targets).
"""

from __future__ import annotations

import argparse
import functools
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments import runs as runs_lib
from experiments import summarize
from inception_jax import cli

SPLITS = {'eval': '-', 'train': '--'}  # Line style of each split.
X_AXES = ('step', 'epoch')
BANDS = ('minmax', 'std')


def arm_series(arm: runs_lib.Arm, key: str, band: str = 'minmax'
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(steps, mean, low, high) of `key` over the arm's runs, at the steps all of them logged."""
  series = [run.series(key) for run in arm.runs]
  steps = functools.reduce(np.intersect1d, [s for s, _ in series])
  values = np.stack([v[np.isin(s, steps)] for s, v in series]) if steps.size else np.zeros(
      (len(series), 0))
  mean = values.mean(axis=0)
  if band == 'std':
    spread = values.std(axis=0)
    return steps, mean, mean - spread, mean + spread
  return steps, mean, values.min(axis=0), values.max(axis=0)


def _keys(metric: str) -> list[tuple[str, str]]:
  """(key, line style) pairs to draw for `metric`."""
  if '/' in metric:
    return [(metric, '-')]
  return [(f'{split}/{metric}', style) for split, style in SPLITS.items()]


def plot(runs: Sequence[runs_lib.Run], metrics: Sequence[str], out: str,
         x: str = 'step', band: str = 'minmax') -> Figure:
  """Draws `metrics` (one panel each) of `runs` and saves the figure to `out`."""
  if x not in X_AXES:
    raise ValueError(f'--x={x!r} is invalid; valid: {", ".join(X_AXES)}')
  if band not in BANDS:
    raise ValueError(f'--band={band!r} is invalid; valid: {", ".join(BANDS)}')
  fig = Figure(figsize=(6 * len(metrics), 5.5), layout='constrained')
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  arms = runs_lib.arms(list(runs))
  if all(len(a.runs) == 1 for a in arms):  # One seed each: every run on its own.
    arms = [runs_lib.Arm(label, [run]) for run, label in zip(runs, runs_lib.labels(list(runs)))]
  drawn = False
  for ax, metric in zip(axes, metrics):
    percent = metric.endswith(('_error', '_accuracy'))
    scale = 100 if percent else 1
    for i, arm in enumerate(arms):
      seeds = f', {len(arm.runs)} seeds' if len(arm.runs) > 1 else ''
      for key, style in _keys(metric):
        steps, mean, low, high = arm_series(arm, key, band)
        if not steps.size:
          continue
        xs = steps / arm.runs[0].steps_per_epoch if x == 'epoch' else steps
        ax.plot(xs, scale * mean, style, color=f'C{i}', linewidth=1.0 if style == '-' else 0.8,
                label=f'{arm.label} ({key.split("/")[0]}{seeds})')
        if len(arm.runs) > 1 and style == '-':
          ax.fill_between(xs, scale * low, scale * high, color=f'C{i}', alpha=0.2, linewidth=0)
        drawn = True
    ax.set_xlabel(x)
    ax.set_ylabel(f'{metric} (%)' if percent else metric)
    if any(len(a.runs) > 1 for a in arms):
      ax.set_title('mean over seeds; band: ' + ('lowest to highest seed' if band == 'minmax'
                                                else 'one standard deviation'), fontsize='small')
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
  parser.add_argument('--band', default='minmax', choices=BANDS,
                      help='Band of an arm of several seeds: minmax or std (one deviation).')
  parser.add_argument('--out', default='curves.png')
  parser.add_argument('--targets', default='0.5',
                      help='Top-1 accuracies of the "steps to X%%" table, e.g. 0.5,0.7.')
  args = parser.parse_args(argv)
  try:
    runs = runs_lib.find_runs(args.runs)
    targets = summarize.parse_targets(args.targets)
    plot(runs, [m for m in args.metric.split(',') if m], args.out, args.x, args.band)
  except cli.USER_ERRORS as e:
    parser.error(str(e))
  rows = summarize.summary_rows(runs, targets, cost=False)
  columns = ['run', 'step'] + [summarize.target_column(t) for t in targets]
  print(summarize.format_markdown([{c: row[c] for c in columns} for row in rows]))
  print(f'Wrote {args.out}')


if __name__ == '__main__':
  main()
