"""The training loop: restore or start, feed the devices, step, log, evaluate, save.

The steps themselves are `steps.py`'s pure functions; everything they depend on is in
the train state or derived from the step and the config (the data stream), so a run
restored from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any, Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview, periodic_actions

from inception_jax import checkpointing, monitor, ops, optim, parallel, validation
from inception_jax import metrics as metrics_lib
from inception_jax.convert import common as convert_common
from inception_jax.data import datasets, prefetch, synthetic
from inception_jax.models import Inception, stack_repeats, unstack_repeats, upgrade_options
from inception_jax.steps import (TrainState, batch_spec, create_model_from_config,
                                 create_train_state, eval_step, train_step)


def schedule_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total train steps)."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, int(math.ceil(config.num_epochs * steps_per_epoch))


def _train_batches(config: ml_collections.ConfigDict, mesh, start: int) -> Iterator[Any]:
  """Global training batches on the devices from `start` on, prefetched (`data/prefetch.py`)."""
  if config.dataset == synthetic.NAME:
    return synthetic.batches(config, parallel.batch_sharded(mesh), config.batch_size)
  local = datasets.pipeline(config.dataset).create_train_iterator(
      config, local_batch_size=parallel.local_batch_size(config.batch_size, mesh),
      start_step=start)
  return prefetch.Prefetcher(local, functools.partial(parallel.to_global, mesh=mesh),
                             config.prefetch_batches)


def _eval_batches(config: ml_collections.ConfigDict, mesh, num_steps: int) -> Iterator[Any]:
  """Exactly `num_steps` global eval batches, padded with masked-out ones at the end.

  Every process must run the same number of eval steps (they are collectives),
  even when its part of the split is one batch shorter.
  """
  if config.dataset == synthetic.NAME:
    yield from (b for b, _ in zip(synthetic.batches(config, parallel.batch_sharded(mesh),
                                                    config.eval_batch_size), range(num_steps)))
    return
  local_batch = parallel.local_batch_size(config.eval_batch_size, mesh)
  padding = {k: np.zeros(v.shape, v.dtype) for k, v in batch_spec(config, local_batch).items()}
  it = datasets.pipeline(config.dataset).create_eval_iterator(
      config, local_batch_size=local_batch)
  for _ in range(num_steps):
    yield parallel.to_global(next(it, padding), mesh)


class _Preemption:
  """SIGTERM sets a flag; the loop saves and exits at the next step boundary.

  With several processes, orbax's preemption sync makes all of them agree on the step.
  """

  def __init__(self):
    self.requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True

  def reached(self, checkpoints: checkpointing.RunCheckpoints, step: int) -> bool:
    if jax.process_count() > 1:
      return checkpoints.reached_preemption(step)
    return self.requested


class _DeathWatch:
  """Ends a run whose network has been dead (`metrics.network_dead`) for `steps` steps.

  A dead pre-pool layer passes no gradient and does not come back: in a sweep the rest
  of such a run is compute spent on a known outcome. `steps` <= 0 never ends a run.
  """

  def __init__(self, steps: int):
    self.steps, self.since = steps, None

  def update(self, step: int, scalars: dict[str, float]) -> bool:
    """Takes one log's train scalars; True when the run should stop here."""
    if not metrics_lib.network_dead(scalars):
      self.since = None
      return False
    self.since = step if self.since is None else self.since
    return self.steps > 0 and step - self.since >= self.steps

  def replay(self, records: Sequence[dict[str, float]], upto: int) -> None:
    """Takes the train logs of `metrics.jsonl` up to a resumed run's step, so that a run
    dead before a preemption counts its dead steps from where they began."""
    # A step logged twice (redone after an earlier resume): its last log.
    logs = {int(r['step']): r for r in records
            if 'train/dead_unit_fraction' in r and r['step'] <= upto}
    for step in sorted(logs):
      self.update(step, logs[step])


STOPPED_FILE = 'stopped.json'  # A run ended before its last step, and why.
DATASET_FILE = 'dataset.json'  # Classes and split sizes, so analysis needs no dataset.


def _read_json(workdir: str, name: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_stopped(workdir: str) -> dict[str, Any] | None:
  return _read_json(workdir, STOPPED_FILE)


def read_dataset_info(workdir: str) -> dict[str, Any] | None:
  return _read_json(workdir, DATASET_FILE)


def _write_json(workdir: str, name: str, value: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(value, f, indent=2)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the resolved config; refuses a workdir that holds a different run."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort(sort_keys=True))
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    saved['model'] = upgrade_options(saved.get('model', {}))
    changed = validation.config_diff(saved, current)
    if changed and not config.allow_config_change:
      raise ValueError(f'{workdir} holds a run with a different config ({"; ".join(changed)}); '
                       'use another --workdir, or --config.allow_config_change=True to resume '
                       'it with the new config')
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(current, f, indent=2, sort_keys=True)


def restore_or_initialize(config, workdir, model, tx, mesh,
                          checkpoints: checkpointing.RunCheckpoints) -> TrainState:
  """The newest checkpoint of `workdir`, else a fresh state (optionally from `init_from`)."""
  init = jax.jit(functools.partial(create_train_state, model, config, tx),
                 out_shardings=parallel.replicated(mesh))
  state = init()
  if checkpoints.latest_step() is not None:
    state = _restore_any_layout(checkpoints, state, model, mesh)
    logging.info('Resuming from %s step %d', checkpoints.directory, int(state.step))
    return state
  if config.init_from:
    state = _load_init_from(state, config.init_from, mesh)
  return state


def _restore_any_layout(checkpoints: checkpointing.RunCheckpoints, template: TrainState,
                        model: Inception, mesh) -> TrainState:
  """The newest readable checkpoint, in whichever layout it was written.

  The state's layout follows `model.scan_blocks` (repeated blocks stacked or one by one)
  and the kernel set's `flat_updates` (optimizer state as flat vectors or as trees); both
  may change on resume (a run begun before the ImageNet configs scanned, another
  `model.kernels`): a state of another layout is restored and converted.
  """
  here = (model.scan_blocks, model.kernel_set.flat_updates)
  layouts = [here] + [(s, f) for s in (here[0], not here[0]) for f in (here[1], not here[1])
                      if (s, f) != here]
  replicated = parallel.replicated(mesh)
  others = [parallel.abstract(jax.eval_shape(functools.partial(
      _relayout, model=model, source=here, target=layout), template), replicated)
            for layout in layouts[1:]]
  state, index = checkpoints.restore_newest_readable(template, *others)
  if index == 0:
    return state
  logging.info('Checkpoint written with scan_blocks=%s and flat optimizer state %s: '
               'converted.', *layouts[index])
  return jax.jit(functools.partial(_relayout, model=model, source=layouts[index], target=here),
                 out_shardings=replicated)(state)


def _relayout(state: TrainState, model: Inception, source: tuple[bool, bool],
              target: tuple[bool, bool]) -> TrainState:
  """`state` of layout `source` = (scan_blocks, flat optimizer state) in layout `target`:
  the same values."""
  opt_state = state.opt_state
  if source[1]:
    opt_state = optim.relayout_opt_state(opt_state, state.params, flat=False)
  if source[0] != target[0]:
    move = functools.partial(stack_repeats if target[0] else unstack_repeats, model=model)
    like_params = lambda x: jax.tree.structure(x) == jax.tree.structure(state.params)
    opt_state = jax.tree.map(lambda x: move(x) if like_params(x) else x, opt_state,
                             is_leaf=like_params)
    state = state.replace(params=move(state.params), ema_params=move(state.ema_params),
                          batch_stats=move(state.batch_stats))
  if target[1]:
    opt_state = optim.relayout_opt_state(opt_state, state.params, flat=True)
  return state.replace(opt_state=opt_state)


def _load_init_from(state: TrainState, directory: str, mesh) -> TrainState:
  """Weights of a converted dir (`python -m inception_jax.convert`) or a `save_variables` dir.

  A classifier whose class count differs stays fresh (a new head); any other
  difference is an error.
  """
  if os.path.isdir(os.path.join(directory, convert_common.VARIABLES_DIR)):  # + model.json
    directory = os.path.join(directory, convert_common.VARIABLES_DIR)
  loaded = checkpointing.load_variables(directory)
  fresh = {'params': state.params, 'batch_stats': state.batch_stats}
  flat_new = flax.traverse_util.flatten_dict(fresh)
  flat_old = flax.traverse_util.flatten_dict(
      {k: loaded[k] for k in ('params', 'batch_stats') if k in loaded})
  missing = sorted('/'.join(k) for k in flat_new if k not in flat_old)
  # Unused tensors (an aux head aside) would be silently dropped, e.g. timm's gammas.
  unused = sorted('/'.join(k) for k in flat_old if k not in flat_new and 'AuxLogits' not in k)
  reshaped = sorted('/'.join(k) for k, v in flat_new.items() if k in flat_old
                    and np.shape(flat_old[k]) != v.shape
                    and '/'.join(k[1:-1]) not in convert_common.CLASSIFIERS)
  for what, keys in (('lacks tensors of this model', missing),
                     ('has tensors this model lacks', unused),
                     ('has tensors of other shapes than this model', reshaped)):
    if keys:
      raise ValueError(f'{directory} {what}: {len(keys)}, e.g. {keys[:5]}; was it converted '
                       'for another model (name, width, bn_scale, aux_logits)?')
  kept = {}
  for key, value in flat_new.items():
    old = np.asarray(flat_old[key])
    if old.shape == value.shape:
      kept[key] = old
    else:
      logging.info('init_from: %s has shape %s, the model %s: re-initialised',
                   '/'.join(key), old.shape, value.shape)
      kept[key] = value
  variables = jax.device_put(flax.traverse_util.unflatten_dict(kept), parallel.replicated(mesh))
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                       ema_params=variables['params'])


def evaluate(state: TrainState, p_eval_step: Any, config, mesh,
             num_eval_examples: int) -> dict[str, float]:
  eval_batch = config.eval_batch_size
  num_steps = math.ceil(num_eval_examples / eval_batch)
  if config.steps_per_eval > 0:
    num_steps = min(num_steps, config.steps_per_eval)
  collected = None
  for batch in _eval_batches(config, mesh, num_steps):
    collected = metrics_lib.accumulate(collected, p_eval_step(state, batch))
  collected = jax.device_get(collected)  # compute() on the host: no more device programs.
  scalars = metrics_lib.with_accuracy(collected.compute(), 'eval')
  # The input pipeline skips examples it cannot decode; count them here.
  expected = min(num_eval_examples, num_steps * eval_batch)
  skipped = expected - int(collected.loss.count)
  scalars['eval/skipped_examples'] = skipped
  if skipped:
    logging.warning('%d of the %d evaluation examples of %s could not be decoded and were '
                    'skipped.', skipped, expected, config.dataset)
  return scalars


def _prepare(config: ml_collections.ConfigDict, workdir: str,
             devices: Sequence[jax.Device] | None) -> tuple[Any, Any, Any, tuple[int, int]]:
  """(data config, mesh, dataset info, `schedule_steps`). Every check that can fail on the
  config or the data runs before the workdir is written; then the config and `dataset.json`
  go there."""
  validation.validate(config)
  data = datasets.with_holdout(config)  # Training's splits: minival, when asked.
  mesh = parallel.create_mesh(devices)
  # Refuses a batch, or a micro-batch, that the devices cannot split.
  parallel.local_batch_size(config.batch_size // config.grad_accum_steps, mesh)
  parallel.local_batch_size(config.eval_batch_size, mesh)
  info = datasets.get_dataset_info(data)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  steps_per_epoch, num_steps = schedule_steps(config, info.num_train_examples)
  _write_json(workdir, DATASET_FILE, {**dataclasses.asdict(info),
                                      'steps_per_epoch': steps_per_epoch,
                                      'num_train_steps': num_steps})
  return data, mesh, info, (steps_per_epoch, num_steps)


def _compile_steps(config: ml_collections.ConfigDict, model, tx, mesh,
                   state: TrainState) -> tuple[Any, Any, Any]:
  """(the lowered train step, the compiled train step, the compiled eval step)."""
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  state_struct = parallel.abstract(state, replicated)
  lowered, p_train_step = parallel.compile_and_sync(
      jax.jit(functools.partial(train_step, model=model, config=config, tx=tx,
                                shards=mesh.devices.size),
              in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
              donate_argnums=(0,), compiler_options=model.compiler_options),
      'train_step', state_struct, parallel.abstract(batch_spec(config, config.batch_size),
                                                    sharded))
  _, p_eval_step = parallel.compile_and_sync(
      jax.jit(functools.partial(eval_step, model=model), in_shardings=(replicated, sharded),
              compiler_options=model.compiler_options),
      'eval_step', state_struct, parallel.abstract(batch_spec(config, config.eval_batch_size),
                                                   sharded))
  return lowered, p_train_step, p_eval_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None) -> TrainState:
  """Trains (resuming from `workdir` if it holds a run) and evaluates; returns the state.

  `devices` defaults to every device of every process.
  """
  data, mesh, info, (steps_per_epoch, num_steps) = _prepare(config, workdir, devices)
  model = create_model_from_config(config, info.num_classes, ops.platform_of(mesh.devices.flat))
  tx = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch),
                              model.kernel_set.flat_updates)
  checkpoints = checkpointing.RunCheckpoints(
      os.path.join(workdir, 'checkpoints'), every_steps=config.checkpoint_every_steps,
      max_to_keep=config.keep_checkpoints)
  state = restore_or_initialize(config, workdir, model, tx, mesh, checkpoints)
  start = int(state.step)
  stopped = read_stopped(workdir)
  if stopped and stopped['step'] == start and config.stop_if_dead_for_steps > 0:
    logging.info('%s stopped at step %d (%s); nothing to do (stop_if_dead_for_steps=0 trains '
                 'on).', workdir, start, stopped['reason'])
    checkpoints.close()
    return state
  if start == 0:
    parameter_overview.log_parameter_overview(state.params)

  writer = metrics_lib.create_writer(workdir)
  if start == 0 and jax.process_index() == 0:
    writer.write_hparams({k: v for k, v in flax.traverse_util.flatten_dict(
        config.to_dict(), sep='.').items() if isinstance(v, (int, float, str, bool))})
  lowered, p_train_step, p_eval_step = _compile_steps(config, model, tx, mesh, state)
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every_steps)
  speed = monitor.StepMonitor(_model_flops(lowered, model, config, tx, mesh),
                              config.batch_size, list(mesh.devices.flat))
  profiler = monitor.Profiler(config.profile_steps, workdir)
  preemption = _Preemption()
  death = _DeathWatch(config.stop_if_dead_for_steps)
  if start and config.stop_if_dead_for_steps > 0:  # Only a resumed, watched run reads its log.
    death.replay(metrics_lib.read_metrics(workdir), start)
  train_batches = _train_batches(data, mesh, start)
  logging.info('Training %s for %d steps (%d per epoch) from step %d on %d devices '
               '(kernels: %s).', config.model.name, num_steps, steps_per_epoch, start,
               mesh.devices.size, model.kernels)
  train_metrics = None
  step = start
  try:  # Pending async saves finish (or fail loudly) on every way out.
    for step in range(start + 1, num_steps + 1):
      profiler.before(step)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = next(train_batches)
        state, m = p_train_step(state, batch)
      train_metrics = metrics_lib.accumulate(train_metrics, m)  # Waits for the step before.
      speed.step(getattr(train_batches, 'wait_s', 0.0))
      profiler.after(step, state)
      report(step)
      if config.nonfinite_policy == 'stop' and not np.isfinite(jax.device_get(m.loss).compute()):
        raise FloatingPointError(
            f'non-finite loss at step {step}; {_last_good(checkpoints)} (nonfinite_policy=stop)')
      dead = False
      if step % config.log_every_steps == 0 or step == num_steps:
        scalars = metrics_lib.train_scalars(jax.device_get(train_metrics).compute(), step)
        writer.write_scalars(step, {**scalars, **speed.scalars()})
        train_metrics = None
        dead = death.update(step, scalars)
      paused = time.perf_counter()
      if step % config.eval_every_steps == 0 or step == num_steps or dead:
        with report.timed('eval'):
          writer.write_scalars(step, evaluate(state, p_eval_step, data, mesh,
                                              info.num_eval_examples))
      stop = preemption.reached(checkpoints, step)
      if step % config.checkpoint_every_steps == 0 or step == num_steps or stop or dead:
        _save(checkpoints, step, state, force=stop or dead or step == num_steps)
      speed.pause(time.perf_counter() - paused)
      if stop:
        logging.warning('Stopped for preemption at step %d; rerun the same command to resume.',
                        step)
        break
      if dead:
        _write_stopped(workdir, step, f'network dead since step {death.since}')
        break
  finally:
    profiler.close()
    if isinstance(train_batches, prefetch.Prefetcher):
      train_batches.close()
    writer.close()  # Its event files and thread: a process may train several runs.
    checkpoints.close()
  # Every process logs this; in a multi-host run they must agree.
  logging.info('Finished at step %d; parameter checksum %.10e', step, parameter_checksum(state))
  return state


def _model_flops(lowered: Any, model, config, tx, mesh) -> float:
  """The train step's FLOPs per device, of the plain network.

  XLA counts a scanned body once and remat's recomputation on top; the plain network's
  lowered step (no compile) gives the FLOPs the model needs, what MFU is measured by.
  """
  if model.scan_blocks or model.remat:
    plain = model.clone(scan_blocks=False, remat=False)
    state = jax.eval_shape(functools.partial(create_train_state, plain, config, tx))
    lowered = jax.jit(functools.partial(train_step, model=plain, config=config, tx=tx,
                                        shards=mesh.devices.size)).lower(
        state, batch_spec(config, config.batch_size))
  return monitor.step_flops(lowered, mesh.devices.size)


def parameter_checksum(state: TrainState) -> float:
  return float(sum(jnp.sum(jnp.abs(p.astype(jnp.float32))) for p in jax.tree.leaves(state.params)))


def _last_good(checkpoints: checkpointing.RunCheckpoints) -> str:
  checkpoints.wait()  # A save still in flight is the last good one once it lands.
  return (f'the last good checkpoint is step {checkpoints.latest_step()} in '
          f'{checkpoints.directory}')


def _write_stopped(workdir: str, step: int, reason: str) -> None:
  logging.warning('Stopping at step %d: %s.', step, reason)
  _write_json(workdir, STOPPED_FILE, {'step': step, 'reason': reason})


def _save(checkpoints: checkpointing.RunCheckpoints, step: int, state: TrainState, *,
          force: bool) -> None:
  """Saves `state` unless its parameters hold NaN/Inf: a bad checkpoint is never written."""
  finite = jax.tree.reduce(lambda a, b: a & b,
                           jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), state.params))
  if not bool(finite):
    raise FloatingPointError(
        f'parameters are not finite at step {step}; not saving. {_last_good(checkpoints)}')
  checkpoints.save(step, state, force=force)
