"""What the benchmark scripts share: list-valued flags, timing, tables, JSON lines.

Imports no jax: the scripts' parent processes only parse flags and start workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results')
# (heading, key, format) of a Markdown table column.
Column = tuple[str, str, str]


def bool_flag(text: str) -> bool:
  if text.lower() in ('1', 'true', 'yes'):
    return True
  if text.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'{text!r} is not a boolean; use true or false')


def list_of(kind: Callable[[str], Any], choices: Sequence[Any] | None = None):
  """An argparse type: a comma-separated list of `kind`, each one of `choices`."""
  allowed = (f'of: {", ".join(map(str, choices))}' if choices else
             'of true/false values' if kind is bool_flag else f'of {kind.__name__} values')

  def parse(text: str) -> list[Any]:
    try:
      values = [kind(v) for v in text.split(',') if v]
    except ValueError:  # int('x'), float('x'); bool_flag says what is wrong itself.
      values = []
    if not values or any(choices is not None and v not in choices for v in values):
      raise argparse.ArgumentTypeError(f'{text!r} is invalid; give a comma-separated list '
                                       + allowed)
    return values
  return parse


def median_seconds(fn: Callable[[], Any], steps: int) -> float:
  """Median wall time of `fn()` over `steps` calls; `fn` blocks until its result is ready."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def table_rows(records: Sequence[dict[str, Any]], columns: Iterable[Column]) -> list[list[str]]:
  """The heading and one row per record, with the columns that some record has."""
  columns = [c for c in columns if any(r.get(c[1]) is not None for r in records)]
  rows = [[c[0] for c in columns]]
  for r in records:
    rows.append(['-' if r.get(key) is None else fmt.format(r[key]) for _, key, fmt in columns])
  return rows


def markdown(rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(row) + ' |' for row in rows]
  lines.insert(1, '|' + '---|' * len(rows[0]))
  return '\n'.join(lines)


def emit(records: Sequence[dict[str, Any]], as_json: bool, table: Callable[..., str],
         out: str | None = None) -> None:
  """Prints the table, or one JSON object per line; appends the JSON lines to `out`."""
  if as_json:
    for r in records:
      print(json.dumps(r), flush=True)
  else:
    print(table(records))
  append_json(out, records)


def append_json(out: str | None, records: Sequence[dict[str, Any]]) -> None:
  """Appends one JSON line per record to the file `out` (nothing when `out` is empty)."""
  if out:
    with open(out, 'a') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
