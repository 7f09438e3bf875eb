"""The phase diagram of a sweep (paper sec. 3.3): each cell's outcome over its seeds.

    python -m experiments.plot_phase runs/scaling_phase --out=phase.png

Columns are the learning rates, rows the other settings the runs differ in (residual
scale, width, warm-up, ...), one row per combination; the runs of a cell differ only in
their seed. A cell is coloured by its seeds' outcomes (`experiments/outcomes.py`): green
when every seed trained, red when every seed died, yellow between (unstable runs, or
seeds that disagree), and says `k/n died`, the other outcomes, and the mean final top-1
error. The same cells are printed as a markdown table. Arguments are run directories or
directories of runs (a sweep's workdir).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from experiments import outcomes
from experiments import runs as runs_lib
from inception_jax import cli

X_KEY = 'learning_rate'


@dataclasses.dataclass
class Cell:
  row: str
  x: float
  runs: list[runs_lib.Run]

  @property
  def counts(self) -> dict[str, int]:
    return outcomes.count(r.outcome for r in self.runs)

  @property
  def score(self) -> float:
    """-1 when every seed trained, +1 when every seed died."""
    c = self.counts
    return (c[outcomes.DIED] - c[outcomes.TRAINED]) / len(self.runs)

  @property
  def mean_error(self) -> float | None:
    errors = [r.last('eval/top1_error') for r in self.runs]
    errors = [e for e in errors if e is not None]
    return float(np.mean(errors)) if errors else None

  def text(self, sep: str = '\n') -> str:
    c, n = self.counts, len(self.runs)
    lines = [f'{c[outcomes.DIED]}/{n} died']
    lines += [f'{c[k]} {k}' for k in (outcomes.TRAINED, outcomes.UNSTABLE) if c[k]]
    if self.mean_error is not None:
      lines.append(f'err {100 * self.mean_error:.0f}%')
    return sep.join(lines)


def cells(runs: Sequence[runs_lib.Run]) -> tuple[list[str], list[float], dict]:
  """(row labels, learning rates, {(row, lr): Cell}) of `runs`."""
  missing = [r.name for r in runs if X_KEY not in r.config]
  if missing:
    raise ValueError(f'{missing[0]} has no {X_KEY} in its config')
  rows = [', '.join(f'{k.removeprefix("model.")}={runs_lib.format_value(v)}'
                    for k, v in d.items()) or 'all runs'
          for d in runs_lib.differences(list(runs), ignore=(X_KEY, runs_lib.SEED_KEY))]
  table: dict[tuple[str, float], Cell] = {}
  for run, row in zip(runs, rows):
    x = float(run.config[X_KEY])
    table.setdefault((row, x), Cell(row, x, [])).runs.append(run)
  return sorted(set(rows)), sorted({x for _, x in table}), table


def plot(runs: Sequence[runs_lib.Run], out: str) -> Figure:
  """Draws the phase diagram of `runs` and saves it to `out`."""
  rows, xs, table = cells(runs)
  score = np.full((len(rows), len(xs)), np.nan)
  fig = Figure(figsize=(2.5 + 1.5 * len(xs), 1.4 + 1.0 * len(rows)), layout='constrained')
  ax = fig.subplots()
  for (row, x), cell in table.items():
    score[rows.index(row), xs.index(x)] = cell.score
  cmap = colormaps['RdYlGn_r'].with_extremes(bad='0.92')  # Grey: a cell the sweep did not run.
  ax.imshow(np.ma.masked_invalid(score), cmap=cmap, vmin=-1.4, vmax=1.4, aspect='auto')
  for (row, x), cell in table.items():
    ax.text(xs.index(x), rows.index(row), cell.text(), ha='center', va='center',
            fontsize='small')
  ax.set_xticks(range(len(xs)), [f'{x:g}' for x in xs])
  ax.set_yticks(range(len(rows)), [row.replace(', ', '\n') for row in rows])
  ax.set_xlabel('learning rate')
  seeds = sorted({len(c.runs) for c in table.values()})
  ax.set_title(f'outcome over {"/".join(map(str, seeds))} seeds per cell\ngreen: trained, '
               'red: died, yellow: unstable or mixed', fontsize='small')
  fig.savefig(out, dpi=100)
  return fig


def format_markdown(runs: Sequence[runs_lib.Run]) -> str:
  """The cells as a markdown table: rows by setting, columns by learning rate."""
  rows, xs, table = cells(runs)
  lines = ['| setting | ' + ' | '.join(f'lr {x:g}' for x in xs) + ' |',
           '|---|' + '---|' * len(xs)]
  for row in rows:
    texts = [table[row, x].text(', ') if (row, x) in table else '-'
             for x in xs]
    lines.append(f'| {row} | ' + ' | '.join(texts) + ' |')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', help='Run directories or directories of runs.')
  parser.add_argument('--out', default='phase.png')
  args = parser.parse_args(argv)
  try:
    runs = runs_lib.find_runs(args.runs)
    plot(runs, args.out)
    print(format_markdown(runs))
  except cli.USER_ERRORS as e:
    parser.error(str(e))
  print(f'Wrote {args.out}')


if __name__ == '__main__':
  main()
