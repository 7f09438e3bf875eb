"""A table of runs: final and best error, steps to a target accuracy, time, size and cost.

    python -m experiments.summarize runs/offline_comparison --targets=0.5,0.7 \
        --csv=summary.csv

Arguments are run directories or directories of runs (a sweep's workdir). Errors are
those of the evaluations (`eval/`, or the EMA weights' `eval/ema_` with --ema), in
percent; "steps to X%" is the first evaluated step whose top-1 accuracy reached X, the
paper's "residual connections accelerate training" in one number. Wall-clock is the
training loop's time (compilation and evaluations included). Params and GFLOPs are
those of the network the run's config builds: one image at the run's image size,
forward, without the auxiliary head, a multiply-add counted as 2 FLOPs. Each run's
outcome (trained, died or unstable, and the step its network died at: paper sec. 3.3)
is `experiments/outcomes.py`'s. The markdown table goes to stdout; --csv writes the
same rows with raw values, --jsonl every run's train and eval metric lines.

Runs that differ only in their seed form an arm. With several seeds per arm, a second
table gives each arm's n, how many of its seeds died, trained or were unstable, and the
mean and standard deviation (over seeds, n - 1 in the denominator) of the errors and of
the steps to each target, and a third compares each arm with the first, paired by
seed: the mean of the per-seed differences with a 95%
bootstrap interval (the seeds resampled 10,000 times). An interval that contains 0 says
the seeds do not tell the arms apart.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
from typing import Any, Callable, Sequence

import numpy as np

from experiments import outcomes
from experiments import runs as runs_lib
from inception_jax import cli
from inception_jax.models import create_model, summary


@functools.lru_cache(maxsize=None)
def _cost(model_json: str, num_classes: int, image_size: int) -> tuple[int, float]:
  model = create_model(num_classes=num_classes, **json.loads(model_json))
  rows = summary.stage_stats(model, image_size)
  return sum(r.params for r in rows), sum(r.flops for r in rows)


def model_cost(run: runs_lib.Run) -> tuple[int, float]:
  """(parameters, forward FLOPs per image) of the run's network."""
  return _cost(json.dumps(run.config['model'], sort_keys=True), run.num_classes,
               run.config['image_size'])


def status(run: runs_lib.Run) -> str:
  """'finished', 'stopped dead at step s', or 'at step s/N', with skipped updates if any."""
  if run.stopped and run.finished:
    parts = [f'stopped at step {run.stopped["step"]}']
  else:
    parts = ['finished' if run.finished else f'at step {run.last_step}/{run.total_steps}']
  if run.skipped_steps:
    parts.append(f'{run.skipped_steps} non-finite steps skipped')
  return ', '.join(parts)


def target_column(accuracy: float) -> str:
  return f'steps to {100 * accuracy:g}%'


def summary_rows(runs: Sequence[runs_lib.Run], targets: Sequence[float] = (),
                 ema: bool = False, cost: bool = True) -> list[dict[str, Any]]:
  """One dict per run with raw values (errors as fractions, None where not logged)."""
  prefix = 'eval/ema_' if ema else 'eval/'
  rows = []
  for run, label in zip(runs, runs_lib.labels(list(runs))):
    outcome = run.outcome
    row = {'run': label, 'status': status(run), 'outcome': outcome.kind,
           'died at': outcome.died_at, 'step': run.last_step,
           'top-1 final': run.last(prefix + 'top1_error'),
           'top-1 best': run.best(prefix + 'top1_error'),
           'top-5 final': run.last(prefix + 'top5_error'),
           'top-5 best': run.best(prefix + 'top5_error')}
    for accuracy in targets:
      row[target_column(accuracy)] = run.steps_to_reach(accuracy, prefix + 'top1_accuracy')
    row['wall-clock s'] = run.wall_clock_seconds
    if cost:
      row['params'], row['GFLOPs'] = model_cost(run)
      row['GFLOPs'] /= 1e9
    rows.append(row)
  return rows


_FORMATS: dict[str, Callable[[Any], str]] = {
    'wall-clock s': lambda v: f'{v:.0f}', 'params': lambda v: f'{v / 1e6:.3f}M',
    'GFLOPs': lambda v: f'{v:.4f}'}


def _format(column: str, value: Any) -> str:
  if value is None:
    return '-'
  if column.startswith('top-'):
    return f'{100 * value:.1f}'
  return _FORMATS.get(column, str)(value)


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table of `rows`; errors in percent, '-' for never logged / never reached."""
  columns = list(rows[0])
  header = [f'{c} err. %' if c.startswith('top-') else c for c in columns]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_format(c, row[c]) for c in columns) + ' |')
  return '\n'.join(lines)


RAW_PREFIXES = ('train/', 'eval/')  # What a run computed; not speed or memory.


def write_jsonl(runs: Sequence[runs_lib.Run], path: str) -> None:
  """Every run's train and eval metric lines, each with the run's directory name."""
  with open(path, 'w') as f:
    for run in runs:
      for record in run.records:
        kept = {k: v for k, v in record.items() if k.startswith(RAW_PREFIXES)}
        if kept:
          f.write(json.dumps({'run': run.name, 'step': record['step'], **kept}) + '\n')


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


ERRORS = ('top-1 final', 'top-1 best', 'top-5 final', 'top-5 best')
BOOTSTRAP_RESAMPLES = 10_000


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def arm_rows(arms: Sequence[runs_lib.Arm], rows_by_run: dict[str, dict[str, Any]],
             targets: Sequence[float]) -> list[dict[str, Any]]:
  """Per arm: n, seeds, and (mean, std) of each error and steps-to-target over its seeds."""
  out = []
  for arm in arms:
    rows = [rows_by_run[r.workdir] for r in arm.runs]
    row = {'arm': arm.label, 'n': len(rows), 'seeds': arm.seeds,
           'outcomes': outcomes.describe(outcomes.count(r.outcome for r in arm.runs))}
    for column in ERRORS:
      values = [r[column] for r in rows if r[column] is not None]
      row[column] = _mean_std(values) if values else None
    for accuracy in targets:
      reached = [r[target_column(accuracy)] for r in rows
                 if r[target_column(accuracy)] is not None]
      row[target_column(accuracy)] = (_mean_std(reached) if reached else None, len(reached))
    out.append(row)
  return out


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> tuple[float, float, float]:
  """Mean of a - b over the pairs, with a 95% percentile-bootstrap interval."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  picks = np.random.default_rng(seed).integers(0, d.size, (resamples, d.size))
  means = d[picks].mean(axis=1)
  return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def comparisons(arms: Sequence[runs_lib.Arm], rows_by_run: dict[str, dict[str, Any]],
                columns: Sequence[str]) -> list[dict[str, Any]]:
  """Each arm against the first, paired by seed, for each of `columns` both arms have."""
  out = []
  base = {s: rows_by_run[r.workdir] for s, r in zip(arms[0].seeds, arms[0].runs)}
  for arm in arms[1:]:
    other = {s: rows_by_run[r.workdir] for s, r in zip(arm.seeds, arm.runs)}
    seeds = sorted(set(base) & set(other))
    for column in columns:
      pairs = [(other[s][column], base[s][column]) for s in seeds
               if other[s][column] is not None and base[s][column] is not None]
      if len(pairs) < 2:
        continue
      mean, low, high = paired_difference(*zip(*pairs))
      out.append({'arm': arm.label, 'minus': arms[0].label, 'metric': column,
                  'pairs': len(pairs), 'difference': mean, 'low': low, 'high': high})
  return out


def format_arms(rows: Sequence[dict[str, Any]], comparisons_: Sequence[dict[str, Any]]) -> str:
  """The arm table (errors in %, mean ± std) and the paired comparisons."""
  def cell(column, value):
    if value is None:
      return '-'
    if column.startswith('top-'):
      return f'{100 * value[0]:.1f} ± {100 * value[1]:.1f}'
    if column.startswith('steps to'):
      stats, reached = value
      return '-' if stats is None else f'{stats[0]:.0f} ± {stats[1]:.0f} ({reached} reached)'
    return ', '.join(map(str, value)) if isinstance(value, list) else str(value)
  columns = list(rows[0])
  header = [f'{c} err. %' if c.startswith('top-') else c for c in columns]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(c, r[c]) for c in columns) + ' |' for r in rows]
  if comparisons_:
    lines += ['', '| arm | minus | metric | pairs | mean difference | 95% bootstrap interval |',
              '|---|---|---|---|---|---|']
    for c in comparisons_:
      scale, unit = (100, ' pt') if c['metric'].startswith('top-') else (1, ' steps')
      lines.append(f'| {c["arm"]} | {c["minus"]} | {c["metric"]} | {c["pairs"]} | '
                   f'{scale * c["difference"]:+.1f}{unit} | [{scale * c["low"]:+.1f}, '
                   f'{scale * c["high"]:+.1f}] |')
  return '\n'.join(lines)


def parse_targets(text: str) -> list[float]:
  """'0.5,0.7' -> [0.5, 0.7]; each an accuracy in (0, 1]."""
  try:
    targets = [float(t) for t in text.split(',') if t.strip()]
  except ValueError:
    targets = []
  if not targets or not all(0 < t <= 1 for t in targets):
    raise ValueError(f'--targets={text!r} is invalid: give accuracies in (0, 1], '
                     'comma-separated, e.g. 0.5,0.7')
  return targets


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', help='Run directories or directories of runs.')
  parser.add_argument('--targets', default='0.5',
                      help='Top-1 accuracies for the "steps to X%%" columns, e.g. 0.5,0.7.')
  parser.add_argument('--ema', action='store_true', help='Errors of the EMA weights.')
  parser.add_argument('--csv', help='Also write the rows to this CSV file.')
  parser.add_argument('--jsonl', help="Also write every run's train and eval metric lines here.")
  parser.add_argument('--no_cost', action='store_true', help='Skip params and FLOPs.')
  args = parser.parse_args(argv)
  try:
    runs, targets = runs_lib.find_runs(args.runs), parse_targets(args.targets)
    rows = summary_rows(runs, targets, ema=args.ema, cost=not args.no_cost)
    print(format_markdown(rows))
    if args.csv:
      write_csv(rows, args.csv)
    if args.jsonl:
      write_jsonl(runs, args.jsonl)
    arms = runs_lib.arms(runs)
    if any(len(a.runs) > 1 for a in arms):
      by_run = {run.workdir: row for run, row in zip(runs, rows)}
      columns = ['top-1 final', 'top-1 best'] + [target_column(t) for t in targets]
      print()
      print(format_arms(arm_rows(arms, by_run, targets), comparisons(arms, by_run, columns)))
  except cli.USER_ERRORS as e:
    parser.error(str(e))


if __name__ == '__main__':
  main()
