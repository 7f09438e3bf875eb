"""Runs a sweep: one training run of `main.py` per override dict of a sweep config.

A sweep config is a Python file with `get_config()`, the base config (main.py loads
the same file), and `sweep()`, a list of dicts of dotted overrides such as
`[{'model.residual_scale': 0.1}, {'model.residual_scale': 1.0}]`. With
`--config=FILE:ARG`, ARG goes to both functions (as main.py passes it to
`get_config`). Each trial trains in `WORKDIR/<its overrides>`, e.g.
`WORKDIR/model.residual_scale=0.1`.

    # Every trial, one after another; finished ones are skipped, unfinished resumed:
    python -m experiments.sweep --config=configs/sweeps/residual_scale.py --workdir=runs/rs
    # One main.py command per trial, for a cluster's job array:
    python -m experiments.sweep --config=configs/sweeps/residual_scale.py --workdir=runs/rs \
        --print_commands
    # Only trial i (default: $SLURM_ARRAY_TASK_ID), so a SLURM array runs the sweep:
    sbatch --array=0-3 --wrap='python -m experiments.sweep \
        --config=configs/sweeps/residual_scale.py --workdir=runs/rs'
    # Four trials at once on one multi-GPU (or TPU) host, each pinned to its own device:
    python -m experiments.sweep --config=configs/sweeps/residual_scale.py --workdir=runs/rs \
        --parallel=4

`--config.key=value` flags apply to every trial. A trial runs as its own `main.py`
process, not in this one: the command that runs locally is the one printed for a
cluster, each trial starts with fresh devices, memory and compile settings, and a
trial that crashes does not end the sweep. Its output goes to `<trial>/train.log`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import os
import re
import shlex
import queue
import subprocess
import sys
from concurrent import futures
from typing import Any, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import runs
from inception_jax import cli, hugepages, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'main.py')
LOG_FILE = 'train.log'
_MAX_NAME = 200  # Below the usual 255-byte file name limit.

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Sweep config file (get_config and sweep).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory holding one sub-directory per trial.')
flags.DEFINE_bool('print_commands', False, 'Print one main.py command per trial; run none.')
flags.DEFINE_integer('trial_index', None,
                     'Run only this trial (0-based); default $SLURM_ARRAY_TASK_ID, else all.')
flags.DEFINE_integer('parallel', 1, 'Trials run at once, each on its own device (slot).',
                     lower_bound=1)
flags.DEFINE_enum('pin', 'auto', ['auto', 'gpu', 'tpu', 'none'],
                  'How a trial is pinned to its slot: CUDA_VISIBLE_DEVICES (gpu), one TPU chip '
                  '(tpu), nothing (none: on CPU the trials share the cores); auto: by the '
                  "host's device nodes.")
TPU_PORT = 8476  # libtpu's default mesh-controller port; slot k uses TPU_PORT + k.


@dataclasses.dataclass(frozen=True)
class Trial:
  index: int
  overrides: dict[str, Any]
  workdir: str
  config: ml_collections.ConfigDict  # The base config with the overrides applied.

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir)


def split_spec(spec: str) -> tuple[str, str | None]:
  """'path.py:arg' -> ('path.py', 'arg'); 'path.py' -> ('path.py', None)."""
  path, sep, arg = spec.partition('.py:')
  return (path + '.py', arg) if sep else (spec, None)


def load_module(path: str) -> Any:
  """The Python file at `path` as a module."""
  module_spec = importlib.util.spec_from_file_location('sweep_config', path)
  if module_spec is None or not os.path.isfile(path):
    raise ValueError(f'sweep config {path!r} is not a Python file')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_sweep(spec: str) -> list[dict[str, Any]]:
  """The override dicts of `sweep()` in the sweep config `spec` ('path.py' or 'path.py:arg')."""
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, 'sweep'):
    raise ValueError(f'{path} has no sweep() function: it is not a sweep config')
  overrides = module.sweep() if arg is None else module.sweep(arg)
  if not overrides or not all(isinstance(o, dict) for o in overrides):
    raise ValueError(f'sweep() of {path} must return a non-empty list of dicts, got '
                     f'{overrides!r}')
  return overrides


def trial_name(overrides: dict[str, Any]) -> str:
  """A readable, file-system safe directory name: 'model.residual_scale=0.1,...'."""
  name = ','.join(f'{k}={runs.format_value(v)}' for k, v in overrides.items()) or 'base'
  name = re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:_MAX_NAME - 11]}-{digest}'
  return name


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted `overrides`, as main.py's `--config.k=v` sets them."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, last = key.split('.')
    target = config
    try:
      for part in parents:
        target = target[part]
      old = target[last]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f'unknown config key {key!r} in a sweep override') from None
    # A scalar given for a tuple field is a 1-tuple, as on the command line.
    if isinstance(old, tuple) and not isinstance(value, (tuple, list)):
      value = (value,)
    target[last] = tuple(value) if isinstance(value, list) else value
  return config


def make_trials(config: ml_collections.ConfigDict, sweep: list[dict[str, Any]],
                workdir: str) -> list[Trial]:
  """The trials of a sweep, each config checked before anything runs."""
  trials = []
  for index, overrides in enumerate(sweep):
    trial_config = apply_overrides(config, overrides)
    try:
      validation.validate(trial_config)
    except ValueError as e:
      raise ValueError(f'trial {index} ({overrides}): {e}') from None
    trials.append(Trial(index, dict(overrides),
                        os.path.abspath(os.path.join(workdir, trial_name(overrides))),
                        trial_config))
  names = [t.name for t in trials]
  if len(set(names)) < len(names):
    raise ValueError(f'two trials of the sweep have the same overrides: {names}')
  return trials


def flag_value(value: Any) -> str:
  """How `--config.key=` spells `value`: tuples as Python literals, the rest as text."""
  return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def command(trial: Trial, spec: str, shared: dict[str, Any]) -> list[str]:
  """The main.py command line of `trial`; `shared` are overrides for every trial."""
  path, arg = split_spec(spec)
  config = os.path.abspath(path) + ('' if arg is None else f':{arg}')
  overrides = {**shared, **trial.overrides}
  return [sys.executable, MAIN, f'--config={config}', f'--workdir={trial.workdir}'] + [
      f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]


def is_finished(trial: Trial) -> bool:
  return (runs.is_run_dir(trial.workdir)
          and runs.is_finished(trial.workdir, trial.config.to_dict()))


def device_env(slot: int, pin: str) -> dict[str, str]:
  """The environment that gives a trial device `slot` alone ('gpu', 'tpu') or nothing.

  One TPU chip per process is libtpu's single-chip topology with its own port, so that
  several processes share one TPU VM.
  """
  if pin == 'gpu':
    return {'CUDA_VISIBLE_DEVICES': str(slot)}
  if pin == 'tpu':
    port = str(TPU_PORT + slot)
    return {'TPU_VISIBLE_CHIPS': str(slot), 'TPU_CHIPS_PER_PROCESS_BOUNDS': '1,1,1',
            'TPU_PROCESS_BOUNDS': '1,1,1', 'TPU_PROCESS_PORT': port,
            'TPU_MESH_CONTROLLER_ADDRESS': f'localhost:{port}',
            'TPU_MESH_CONTROLLER_PORT': port}
  return {}


def run_trial(trial: Trial, cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
  """Runs (or resumes) `trial` unless finished, with `env` added; returns its status."""
  if is_finished(trial):
    return 'finished before, skipped'
  os.makedirs(trial.workdir, exist_ok=True)
  log = os.path.join(trial.workdir, LOG_FILE)
  env = env or {}
  logging.info('Trial %d: %s (log: %s) %s', trial.index, trial.name, log, env or '')
  with open(log, 'a') as f:
    f.write(f'# {shlex.join(f"{k}={v}" for k, v in env.items())} {shlex.join(cmd)}\n')
    f.flush()
    rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                        env={**os.environ, **env}).returncode
  if rc:
    return f'FAILED (exit {rc}, see {log})'
  run = runs.Run.load(trial.workdir)
  stopped = f' (stopped at step {run.stopped["step"]})' if run.stopped else ''
  return f'ran{stopped}; {run.outcome.kind}: {run.outcome.why}'


def select(trials: list[Trial], index: int | str | None) -> list[Trial]:
  if index is None or index == '':
    return trials
  if not str(index).isdigit() or int(index) >= len(trials):
    raise ValueError(f'trial_index={index!r} is invalid: this sweep has {len(trials)} trials, '
                     f'0-{len(trials) - 1}')
  return [trials[int(index)]]


def run_all(trials: list[Trial], spec: str, shared: dict[str, Any], parallel: int,
            pin: str) -> list[tuple[Trial, str]]:
  """Runs the trials, `parallel` at a time, each on a free device slot 0..parallel-1."""
  if parallel == 1:
    return [(t, run_trial(t, command(t, spec, shared))) for t in trials]
  pin = (hugepages.accelerator_kind() or 'none') if pin == 'auto' else pin
  # A pinned trial is one process with its own devices, never part of a cluster.
  shared = {'distributed': 'false', **shared}
  slots: queue.Queue[int] = queue.Queue()
  for slot in range(parallel):
    slots.put(slot)

  def on_a_slot(trial: Trial) -> str:
    slot = slots.get()
    try:
      return run_trial(trial, command(trial, spec, shared), device_env(slot, pin))
    finally:
      slots.put(slot)

  with futures.ThreadPoolExecutor(parallel) as pool:
    return list(zip(trials, pool.map(on_a_slot, trials)))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  spec = config_flags.get_config_filename(FLAGS['config'])
  shared = config_flags.get_override_values(FLAGS['config'])
  try:
    sweep = load_sweep(spec)
    clash = sorted(set(shared) & set().union(*sweep))
    if clash:
      raise ValueError(f'--config.{clash[0]} is a swept key of this sweep; it cannot be set '
                       'for all trials')
    trials = make_trials(FLAGS.config, sweep, FLAGS.workdir)
    index = FLAGS.trial_index
    selected = select(trials, os.environ.get('SLURM_ARRAY_TASK_ID') if index is None else index)
  except cli.USER_ERRORS as e:
    raise SystemExit(f'error: {e}') from None
  if FLAGS.print_commands:
    for trial in selected:
      print(shlex.join(command(trial, spec, shared)))
    return
  statuses = run_all(selected, spec, shared, FLAGS.parallel, FLAGS.pin)
  for trial, status in statuses:
    print(f'[{trial.index}] {trial.name}: {status}')
  if any(s.startswith('FAILED') for _, s in statuses):
    raise SystemExit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
