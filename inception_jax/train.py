"""Training and evaluation: the train state, pure jitted steps, and the loop.

Everything a step depends on lives in `TrainState` or is derived from the step
(dropout key) and the config (data stream), so a run restored from a checkpoint
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
from typing import Any, Callable, Iterator, Sequence

import flax
import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview, periodic_actions

from inception_jax import checkpointing, ops, optim, parallel, validation
from inception_jax import metrics as metrics_lib
from inception_jax.convert import common as convert_common
from inception_jax.data import input_pipeline
from inception_jax.models import Inception, create_model, upgrade_options


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  skipped_steps: jax.Array  # Updates dropped for a non-finite loss or gradient.


def create_model_from_config(config: ml_collections.ConfigDict, num_classes: int,
                             platform: str | None = None) -> Inception:
  """The config's network; `model.kernels='auto'` resolves for `platform` (see `create_model`)."""
  return create_model(num_classes=num_classes, platform=platform, **config.model.to_dict())


def initial_variables(model: Inception, config: ml_collections.ConfigDict) -> dict[str, Any]:
  x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  return model.init(jax.random.key(config.seed), x, train=False)


def create_train_state(model: Inception, config: ml_collections.ConfigDict,
                       tx: optax.GradientTransformation) -> TrainState:
  variables = initial_variables(model, config)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    ema_params=params, skipped_steps=jnp.zeros((), jnp.int32))


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Inception,
               config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation) -> tuple[TrainState, metrics_lib.TrainMetrics]:
  """One update on a global batch; pure, so it jits and shards as is."""
  dropout_key = jax.random.fold_in(jax.random.key(config.seed + 1), state.step)

  def loss_fn(params):
    outputs, new_vars = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        rngs={'dropout': dropout_key}, mutable=['batch_stats', 'intermediates'])
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss = jnp.mean(cross_entropy(logits, batch['label'], config.label_smoothing))
    if aux is not None:
      loss += config.aux_loss_weight * jnp.mean(
          cross_entropy(aux, batch['label'], config.label_smoothing))
    total = loss + config.weight_decay * optim.l2_loss(params)
    return total, (loss, logits, new_vars['batch_stats'], new_vars['intermediates'])

  (_, (loss, logits, batch_stats, intermediates)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  pre_pool = intermediates['pre_pool'][0]
  # The norm of the concatenated gradient (the flat optimizer concatenates it anyway): one
  # reduction instead of one per leaf, which XLA:CPU compiles as a kernel each (-7 s of
  # compile unrolled, benchmarks/README.md (h)).
  grad_norm = jnp.linalg.norm(jax.flatten_util.ravel_pytree(grads)[0])
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if config.nonfinite_policy == 'skip':
    # Keep the old parameters and statistics; the step counter still advances so the
    # data stream moves past the bad batch. One `cond` rather than a `where` per leaf:
    # the same result, and XLA:CPU compiles no kernel per leaf (-12 s of compile).
    params, opt_state, batch_stats = jax.lax.cond(
        finite, lambda: (params, opt_state, batch_stats),
        lambda: (state.params, state.opt_state, state.batch_stats))
  ema = optim.update_ema(state.ema_params, params, optim.ema_decay(config, state.step))
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=ema, skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  zero = (pre_pool == 0)
  metrics = metrics_lib.TrainMetrics.single_from_model_output(
      loss=loss, grad_norm=grad_norm, learning_rate=optim.current_learning_rate(opt_state),
      pre_pool_zero_fraction=jnp.mean(zero.astype(jnp.float32)),
      dead_unit_fraction=jnp.mean(jnp.all(zero, axis=(0, 1, 2)).astype(jnp.float32)),
      skipped_steps=new_state.skipped_steps,
      residual_ratio=metrics_lib.residual_ratios(intermediates),
      **metrics_lib.classification_metrics(logits, batch['label']))
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: Inception,
              config: ml_collections.ConfigDict) -> metrics_lib.EvalMetrics:
  """Loss and top-k error of the raw and the EMA weights; padded examples masked."""
  outputs = {}
  for prefix, params in (('', state.params), ('ema_', state.ema_params)):
    logits = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch['image'],
                         train=False)
    outputs[f'{prefix}loss'] = cross_entropy(logits, batch['label'], 0.0)
    for k, v in metrics_lib.classification_metrics(logits, batch['label']).items():
      outputs[prefix + k] = v
  return metrics_lib.EvalMetrics.single_from_model_output(mask=batch['mask'], **outputs)


def schedule_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total train steps)."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, int(math.ceil(config.num_epochs * steps_per_epoch))


def _eval_batches(config: ml_collections.ConfigDict, local_batch: int, num_steps: int,
                  template: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
  """Exactly `num_steps` local eval batches, padded with masked-out ones at the end.

  Every process must run the same number of eval steps (they are collectives),
  even when its part of the split is one batch shorter.
  """
  it = input_pipeline.create_eval_iterator(config, local_batch_size=local_batch)
  for _ in range(num_steps):
    batch = next(it, None)
    if batch is None:
      batch = {k: np.zeros_like(v) for k, v in template.items()}
    yield batch


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
    logging.info('Resuming from %s step %d', checkpoints.directory, checkpoints.latest_step())
    return checkpoints.restore(state)
  if config.init_from:
    state = _load_init_from(state, config.init_from, mesh)
  return state


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


def evaluate(state: TrainState, p_eval_step: Callable, config, mesh, num_eval_examples: int,
             local_batch: int) -> dict[str, float]:
  eval_batch = config.eval_batch_size
  num_steps = math.ceil(num_eval_examples / eval_batch)
  if config.steps_per_eval > 0:
    num_steps = min(num_steps, config.steps_per_eval)
  template = {'image': np.zeros((local_batch, config.image_size, config.image_size, 3),
                                np.float32),
              'label': np.zeros((local_batch,), np.int32),
              'mask': np.zeros((local_batch,), np.float32)}
  collected = None
  for batch in _eval_batches(config, local_batch, num_steps, template):
    m = p_eval_step(state, parallel.to_global(batch, mesh))
    collected = m if collected is None else collected.merge(m)
  scalars = metrics_lib.with_accuracy(collected.compute(), 'eval')
  # The input pipeline skips examples it cannot decode; count them here.
  expected = min(num_eval_examples, num_steps * eval_batch)
  skipped = expected - int(collected.loss.count)
  scalars['eval/skipped_examples'] = skipped
  if skipped:
    logging.warning('%d of the %d evaluation examples of %s could not be decoded and were '
                    'skipped.', skipped, expected, config.dataset)
  return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None) -> TrainState:
  """Trains (resuming from `workdir` if it holds a run) and evaluates; returns the state.

  `devices` defaults to every device of every process.
  """
  # Every check that can fail on the config or the data runs before the workdir is written.
  validation.validate(config)
  mesh = parallel.create_mesh(devices)
  local_batch = parallel.local_batch_size(config.batch_size, mesh)
  local_eval_batch = parallel.local_batch_size(config.eval_batch_size, mesh)
  info = input_pipeline.get_dataset_info(config)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  steps_per_epoch, num_steps = schedule_steps(config, info.num_train_examples)
  model = create_model_from_config(config, info.num_classes, ops.platform_of(mesh.devices.flat))
  tx = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch))
  checkpoints = checkpointing.RunCheckpoints(
      os.path.join(workdir, 'checkpoints'), every_steps=config.checkpoint_every_steps,
      max_to_keep=config.keep_checkpoints)
  state = restore_or_initialize(config, workdir, model, tx, mesh, checkpoints)
  start = int(state.step)
  if start == 0:
    parameter_overview.log_parameter_overview(state.params)

  writer = metrics_lib.create_writer(workdir)
  if start == 0 and jax.process_index() == 0:
    writer.write_hparams({k: v for k, v in flax.traverse_util.flatten_dict(
        config.to_dict(), sep='.').items() if isinstance(v, (int, float, str, bool))})
  state_sharding = parallel.replicated(mesh)
  p_train_step = jax.jit(functools.partial(train_step, model=model, config=config, tx=tx),
                         in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
                         out_shardings=(state_sharding, parallel.replicated(mesh)),
                         donate_argnums=(0,), compiler_options=model.compiler_options)
  p_eval_step = jax.jit(functools.partial(eval_step, model=model, config=config),
                        in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
                        compiler_options=model.compiler_options)
  p_train_step = parallel.compile_then_sync(p_train_step, 'train_step')
  p_eval_step = parallel.compile_then_sync(p_eval_step, 'eval_step')
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every_steps)
  preemption = _Preemption()
  train_iter = input_pipeline.create_train_iterator(config, local_batch_size=local_batch,
                                                    start_step=start)
  logging.info('Training %s for %d steps (%d per epoch) from step %d on %d devices.',
               config.model.name, num_steps, steps_per_epoch, start, mesh.devices.size)
  train_metrics = None
  step = start
  try:  # Pending async saves finish (or fail loudly) on every way out.
    for step in range(start + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, m = p_train_step(state, parallel.to_global(next(train_iter), mesh))
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      report(step)
      if config.nonfinite_policy == 'stop' and not np.isfinite(float(m.loss.compute())):
        raise FloatingPointError(
            f'non-finite loss at step {step}; {_last_good(checkpoints)} (nonfinite_policy=stop)')
      if step % config.log_every_steps == 0 or step == num_steps:
        writer.write_scalars(step, metrics_lib.train_scalars(train_metrics.compute(), step))
        train_metrics = None
      if step % config.eval_every_steps == 0 or step == num_steps:
        with report.timed('eval'):
          writer.write_scalars(step, evaluate(state, p_eval_step, config, mesh,
                                              info.num_eval_examples, local_eval_batch))
      stop = preemption.reached(checkpoints, step)
      if step % config.checkpoint_every_steps == 0 or step == num_steps or stop:
        _save(checkpoints, step, state, force=stop or step == num_steps)
      if stop:
        logging.warning('Stopped for preemption at step %d; rerun the same command to resume.',
                        step)
        break
  finally:
    writer.flush()
    checkpoints.close()
  # Every process logs this; in a multi-host run they must agree.
  logging.info('Finished at step %d; parameter checksum %.10e', step, parameter_checksum(state))
  return state


def parameter_checksum(state: TrainState) -> float:
  return float(sum(jnp.sum(jnp.abs(p.astype(jnp.float32))) for p in jax.tree.leaves(state.params)))


def _last_good(checkpoints: checkpointing.RunCheckpoints) -> str:
  checkpoints.wait()  # A save still in flight is the last good one once it lands.
  return (f'the last good checkpoint is step {checkpoints.latest_step()} in '
          f'{checkpoints.directory}')


def _save(checkpoints: checkpointing.RunCheckpoints, step: int, state: TrainState, *,
          force: bool) -> None:
  """Saves `state` unless its parameters hold NaN/Inf: a bad checkpoint is never written."""
  finite = jax.tree.reduce(lambda a, b: a & b,
                           jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), state.params))
  if not bool(finite):
    raise FloatingPointError(
        f'parameters are not finite at step {step}; not saving. {_last_good(checkpoints)}')
  checkpoints.save(step, state, force=force)
