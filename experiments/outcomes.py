"""The outcome of a run, for the paper's sec. 3.3: trained, died, or unstable. Defined here only.

The paper's wide Inception-ResNets "died": the last layer before the average pool put
out only zeros, for good, and the network stopped learning. A run's metric log says
which of three things happened:

- `died`: the pre-pool layer was dead (`metrics.network_dead`: >= 99% of its activations
  and >= 95% of its channels zero) at every train log of the last part of the run, and
  the final evaluation is near chance. `died_at` is the first log of that dead stretch.
- `trained`: the final evaluation is well below chance error and the pre-pool layer is
  alive at the last log.
- `unstable`: anything else: a network that is dead at the end but was not for long, or
  is dead yet still classifies, or is alive but did not learn.

Chance is one over the number of classes; the thresholds are multiples of it, so that
they mean the same on 10 classes as on 1000.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from inception_jax import metrics

TRAINED, UNSTABLE, DIED = 'trained', 'unstable', 'died'
OUTCOMES = (TRAINED, UNSTABLE, DIED)

# `died` needs the dead stretch to cover the last fifth of the steps the run ran, and at
# least two logs: a network that recovers within that long was not dead (ReLUs pass no
# gradient at zero, so the paper's deaths were for good), and one bad log is noise.
LAST_PART = 0.2
MIN_DEAD_LOGS = 2
# `died` also needs the raw weights' final top-1 accuracy at most 1.5x chance (15% on 10
# classes, 0.15% on ImageNet): a network whose few live units still classify is not dead.
NEAR_CHANCE = 1.5
# `trained` needs at least 2.5x chance accuracy (25% on 10 classes: 15 points below the
# 90% chance error, ten standard errors on 1,000 evaluation images).
TRAINED_OVER_CHANCE = 2.5


@dataclasses.dataclass(frozen=True)
class Outcome:
  kind: str                # One of OUTCOMES.
  died_at: int | None      # First log of the dead stretch that ends the run, if it ends dead.
  accuracy: float | None   # Final evaluation's top-1 accuracy (raw weights).
  why: str                 # One line a person can check against the log.


def _by_step(records: Iterable[Mapping[str, Any]], keys: tuple[str, ...]
             ) -> dict[int, dict[str, float]]:
  """{step: record} of the records that have every one of `keys`; a redone step's later log wins."""
  out = {}
  for record in records:
    if all(k in record for k in keys):
      out[int(record['step'])] = dict(record)
  return dict(sorted(out.items()))


def classify(records: Iterable[Mapping[str, Any]], num_classes: int) -> Outcome:
  """The outcome of the run whose metric log (`metrics.jsonl` records) is `records`."""
  records = list(records)
  chance = 1.0 / num_classes
  train = _by_step(records, ('train/pre_pool_zero_fraction', 'train/dead_unit_fraction'))
  evals = _by_step(records, ('eval/top1_error',))
  if not train or not evals:
    return Outcome(UNSTABLE, None, None, 'no train log or no evaluation yet')
  accuracy = 1.0 - list(evals.values())[-1]['eval/top1_error']
  dead = {step: metrics.network_dead(r) for step, r in train.items()}
  steps = list(dead)
  trailing = 0
  while trailing < len(steps) and dead[steps[-1 - trailing]]:
    trailing += 1
  died_at = steps[-trailing] if trailing else None
  last = steps[-1]
  if died_at is None:
    if accuracy >= TRAINED_OVER_CHANCE * chance:
      return Outcome(TRAINED, None, accuracy, f'alive, {100 * accuracy:.1f}% top-1')
    return Outcome(UNSTABLE, None, accuracy, f'alive but {100 * accuracy:.1f}% top-1, below '
                   f'{100 * TRAINED_OVER_CHANCE * chance:.0f}%')
  long_enough = trailing >= MIN_DEAD_LOGS and died_at <= last * (1 - LAST_PART)
  if not long_enough:
    return Outcome(UNSTABLE, died_at, accuracy,
                   f'dead only since step {died_at} of {last} ({trailing} logs)')
  if accuracy > NEAR_CHANCE * chance:
    return Outcome(UNSTABLE, died_at, accuracy, f'dead since step {died_at} but '
                   f'{100 * accuracy:.1f}% top-1, above {100 * NEAR_CHANCE * chance:.0f}%')
  return Outcome(DIED, died_at, accuracy, f'dead since step {died_at}, '
                 f'{100 * accuracy:.1f}% top-1')


def count(outcomes: Iterable[Outcome]) -> dict[str, int]:
  """How many of each kind, in `OUTCOMES` order (zeros included)."""
  kinds = [o.kind for o in outcomes]
  return {kind: kinds.count(kind) for kind in OUTCOMES}


def describe(counts: Mapping[str, int]) -> str:
  """'2 of 2 seeds died', or '1 of 2 seeds died, 1 trained' for a cell of a sweep."""
  n = sum(counts.values())
  parts = [f'{counts[DIED]} of {n} seeds died']
  parts += [f'{counts[k]} {k}' for k in (TRAINED, UNSTABLE) if counts[k]]
  return ', '.join(parts)
