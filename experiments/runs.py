"""Reads run directories: config, metric log, checkpoints, and what they say about the run.

A run directory is what `main.py --workdir=DIR` writes: `config.json` (the resolved
config), `metrics.jsonl` (one record per write: `{"step": N, "train/loss": ..}`) and
`checkpoints/<step>/`. Every experiments module reads runs through this one, never
through training internals.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterable

import ml_collections
import numpy as np

from experiments import outcomes
from inception_jax import metrics as metrics_lib
from inception_jax import train
from inception_jax.data import datasets
from inception_jax.models import upgrade_options

CONFIG_FILE = 'config.json'
CHECKPOINTS = 'checkpoints'
# Where or how a run ran, not what it computed: never a difference between runs.
INCIDENTAL_KEYS = ('data_dir', 'manual_dir', 'compilation_cache_dir', 'distributed',
                   'allow_config_change')


def is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_config(workdir: str) -> dict[str, Any]:
  """The resolved config a run wrote (`train.write_config`), as JSON values."""
  if not is_run_dir(workdir):
    raise ValueError(f'{workdir} is not a run directory: it has no {CONFIG_FILE}')
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config = json.load(f)
  config['model'] = upgrade_options(config.get('model', {}))
  return config


@dataclasses.dataclass
class Run:
  """One training run as read from its directory."""
  workdir: str
  config: dict[str, Any]
  records: list[dict[str, float]]

  @classmethod
  def load(cls, workdir: str) -> Run:
    return cls(workdir, read_config(workdir), metrics_lib.read_metrics(workdir))

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in step order.

    A resumed run redoes the steps after its last checkpoint and logs them again;
    the later value of a step wins.
    """
    by_step = {int(r['step']): r[key] for r in self.records if key in r}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)

  def last(self, key: str) -> float | None:
    values = self.series(key)[1]
    return float(values[-1]) if values.size else None

  def best(self, key: str) -> float | None:
    """The lowest value of `key` (errors and losses; use `1 - best error` for accuracy)."""
    values = self.series(key)[1]
    return float(np.min(values)) if values.size else None

  @property
  def last_step(self) -> int:
    return max((int(r['step']) for r in self.records), default=0)

  def checkpoint_steps(self) -> list[int]:
    return checkpoint_steps(self.workdir)

  @functools.cached_property
  def _recorded_data(self) -> dict[str, Any]:
    """The dataset's figures as training recorded them (`train.DATASET_FILE`); {} if none."""
    return train.read_dataset_info(self.workdir) or {}

  @functools.cached_property
  def steps_per_epoch(self) -> int:
    """As training recorded it (else computed from the config and the data)."""
    return self._recorded_data.get('steps_per_epoch') or schedule(self.config)[0]

  @property
  def total_steps(self) -> int:
    return total_steps(self.config)

  @property
  def finished(self) -> bool:
    return is_finished(self.workdir, self.config)

  @functools.cached_property
  def num_classes(self) -> int:
    """The classes of the run's dataset, as training recorded them (else read from the data)."""
    return self._recorded_data.get('num_classes') or dataset_info(self.config).num_classes

  @functools.cached_property
  def outcome(self) -> outcomes.Outcome:
    """Trained, died or unstable (paper sec. 3.3; `experiments/outcomes.py`)."""
    return outcomes.classify(self.records, self.num_classes)

  @functools.cached_property
  def stopped(self) -> dict[str, Any] | None:
    """{'step', 'reason'} when the run ended early (`stop_if_dead_for_steps`), else None."""
    return train.read_stopped(self.workdir)

  @property
  def skipped_steps(self) -> int:
    """Updates dropped for a non-finite loss or gradient."""
    return int(self.last('train/skipped_steps') or 0)

  @property
  def wall_clock_seconds(self) -> float | None:
    """Training time: clu's `uptime` (seconds since the loop started), summed over restarts.

    Read in log order, not by step, so the steps a restart redoes count twice, as
    they cost twice.
    """
    uptime = np.array([r['uptime'] for r in self.records if 'uptime' in r])
    if not uptime.size:
      return None
    # Each restart begins a new count; keep the last value of every count.
    restarts = np.flatnonzero(np.diff(uptime) < 0)
    return float(np.sum(uptime[restarts]) + uptime[-1])

  def steps_to_reach(self, accuracy: float, key: str = 'eval/top1_accuracy') -> int | None:
    """The first logged step at which `key` is at least `accuracy`; None if never."""
    steps, values = self.series(key)
    reached = steps[values >= accuracy]
    return int(reached[0]) if reached.size else None


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints of the run in `workdir`.

  Orbax writes a checkpoint under a temporary name and renames it to `<step>` once
  complete, so only all-digit names count.
  """
  directory = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def dataset_info(config: dict[str, Any]) -> datasets.DatasetInfo:
  """Classes and split sizes of a run's dataset as training reads it (its minival carved
  off, `holdout_fraction`); the dataset must be available here."""
  return datasets.get_dataset_info(datasets.with_holdout(ml_collections.ConfigDict(config)))


def schedule(config: dict[str, Any]) -> tuple[int, int]:
  """(steps per epoch, total train steps) of a run's config, as training computes them."""
  return train.schedule_steps(ml_collections.ConfigDict(config),
                              dataset_info(config).num_train_examples)


def total_steps(config: dict[str, Any]) -> int:
  if config['num_train_steps'] > 0:  # No need to read the dataset.
    return config['num_train_steps']
  return schedule(config)[1]


def is_finished(workdir: str, config: dict[str, Any]) -> bool:
  """Whether the run in `workdir` saved the final step of `config` (training always does),
  or ended early with its network dead (`stop_if_dead_for_steps`)."""
  saved, stopped = checkpoint_steps(workdir), train.read_stopped(workdir)
  if stopped and stopped['step'] in saved:
    return True
  return max(saved, default=0) >= total_steps(config)


def find_runs(paths: Iterable[str]) -> list[Run]:
  """Runs at `paths`, each a run directory or a directory of them (e.g. a sweep's)."""
  runs = []
  for path in paths:
    if is_run_dir(path):
      runs.append(Run.load(path))
      continue
    children = sorted(os.path.join(path, d) for d in os.listdir(path)) if os.path.isdir(
        path) else []
    found = [Run.load(c) for c in children if is_run_dir(c)]
    if not found:
      raise ValueError(f'{path} is neither a run directory (with {CONFIG_FILE}) nor a '
                       'directory of runs')
    runs += found
  return runs


def flatten(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'model': {'name': ..}} -> {'model.name': ..}."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def differences(runs: list[Run], ignore: tuple[str, ...] = ()) -> list[dict[str, Any]]:
  """Per run, the config values that are not the same in all `runs` (but `ignore`d keys)."""
  flat = [flatten(r.config) for r in runs]
  keys = sorted(set().union(*flat)) if flat else []
  varying = [k for k in keys if k not in INCIDENTAL_KEYS + ignore
             and len({json.dumps(f.get(k)) for f in flat}) > 1]
  return [{k: f.get(k) for k in varying} for f in flat]


def format_value(value: Any) -> str:
  """A config value as a short string: 0.1, False, inception_v4, 1x3x1 (a tuple)."""
  if isinstance(value, (list, tuple)):
    return 'x'.join(format_value(v) for v in value) if value else 'default'
  return str(value)


def labels(runs: list[Run], ignore: tuple[str, ...] = ()) -> list[str]:
  """A legend label per run: its config differences ('name=inception_v4, ...').

  Falls back to directory names where the configs do not tell runs apart.
  """
  out = [', '.join(f'{k.removeprefix("model.")}={format_value(v)}' for k, v in d.items())
         for d in differences(runs, ignore)]
  if len(set(out)) < len(out) or not all(out):
    return [r.name for r in runs]
  return out


@dataclasses.dataclass
class Arm:
  """The runs of one setting that differ only in `seed`: one arm of a comparison."""
  label: str
  runs: list[Run]

  @property
  def seeds(self) -> list[int]:
    return [int(r.config.get('seed', 0)) for r in self.runs]


SEED_KEY = 'seed'


def arms(runs: list[Run]) -> list[Arm]:
  """`runs` grouped by their configs apart from the seed, in order of first appearance."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    rest = {k: v for k, v in flatten(run.config).items()
            if k != SEED_KEY and k not in INCIDENTAL_KEYS}
    groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(run)
  members = list(groups.values())
  if len(members) == 1:
    return [Arm('all runs', members[0])]
  return [Arm(name, m) for name, m in zip(labels([m[0] for m in members], (SEED_KEY,)),
                                          members)]
