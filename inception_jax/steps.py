"""The pure steps of training: the train state, one update, one evaluation.

Everything a step depends on lives in `TrainState` or is derived from the step
(dropout and augmentation keys) and the config, so a run restored from a checkpoint
continues exactly as if it had never stopped. The steps are pure functions of
(state, batch): they jit and shard as they are (`train.py`, `aot.py`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import optax

from inception_jax import metrics as metrics_lib
from inception_jax import optim
from inception_jax.data import augment
from inception_jax.models import Inception, create_model


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


def classification_loss(logits: jax.Array, aux_logits: jax.Array | None, labels: jax.Array,
                        smoothing: float, aux_weight: float) -> jax.Array:
  """Mean smoothed cross-entropy, plus `aux_weight` times the aux head's (Inception-v3)."""
  loss = jnp.mean(cross_entropy(logits, labels, smoothing))
  if aux_logits is not None:
    loss += aux_weight * jnp.mean(cross_entropy(aux_logits, labels, smoothing))
  return loss


def micro_batches(x: jax.Array, count: int, shards: int) -> jax.Array:
  """(B, ...) -> (count, B / count, ...): micro-batch i is chunk i of each shard's part.

  The batch is split over `shards` devices in blocks; taking the same chunk of every
  block keeps each micro-batch spread over all the devices (on one device, contiguous).
  """
  b = x.shape[0]
  x = x.reshape(shards, count, b // (shards * count), *x.shape[1:]).swapaxes(0, 1)
  return x.reshape(count, b // count, *x.shape[3:])


def gradients(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array, *,
              model: Inception, config: ml_collections.ConfigDict, shards: int = 1
              ) -> tuple[Any, dict[str, Any]]:
  """(mean gradient of loss + weight decay, the batch's outputs: loss, new BatchNorm
  statistics, metrics), over `config.grad_accum_steps` micro-batches.

  With k > 1 micro-batches (`micro_batches`, over `shards` devices) the gradients are
  summed in float32 by a `lax.scan`, one forward and backward pass at a time: the memory
  of batch / k, the update of the batch. Each micro-batch's BatchNorm statistics feed one
  running-average update per step, as the groups of a single batch do.
  """
  def loss_fn(params, images, labels, key):
    outputs, new_vars = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        rngs={'dropout': key}, mutable=['batch_stats', 'intermediates'])
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss = classification_loss(logits, aux, labels, config.label_smoothing,
                               config.aux_loss_weight)
    total = loss + config.weight_decay * optim.l2_loss(params)
    # Reduced here, per micro-batch: their combination needs no batch-sized concatenation
    # (which XLA would all-gather across the devices).
    zero = new_vars['intermediates']['pre_pool'][0] == 0
    outputs = {'loss': loss, 'batch_stats': new_vars['batch_stats'],
               'stage_stats': metrics_lib.stage_stats(new_vars['intermediates']),
               'zero_fraction': jnp.mean(zero.astype(jnp.float32)),
               'dead_units': jnp.all(zero, axis=(0, 1, 2)),
               **metrics_lib.classification_metrics(logits, labels)}
    return total, outputs

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = config.grad_accum_steps
  if k == 1:
    (_, out), grads = grad_fn(state.params, images, labels, key)
    return grads, out

  def accumulate(total, micro):
    (_, out), grads = grad_fn(state.params, *micro)
    return jax.tree.map(jnp.add, total, grads), out

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  micro = (micro_batches(images, k, shards), micro_batches(labels, k, shards),
           jax.random.split(key, k))
  grads, out = jax.lax.scan(accumulate, zeros, micro)
  grads = jax.tree.map(lambda g: g / k, grads)
  dead = jnp.all(out.pop('dead_units'), axis=0)
  return grads, {**jax.tree.map(lambda v: jnp.mean(v, axis=0), out), 'dead_units': dead}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Inception,
               config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
               shards: int = 1) -> tuple[TrainState, metrics_lib.TrainMetrics]:
  """One update on a global batch (`gradients`: in micro-batches when asked); pure, so it
  jits and shards as is."""
  dropout_key = jax.random.fold_in(jax.random.key(config.seed + 1), state.step)
  colour_key = jax.random.fold_in(jax.random.key(config.seed + 2), state.step)
  images = augment.train_images(batch['image'], colour_key, config.color_distortion,
                                model.dtype)
  grads, out = gradients(state, images, batch['label'], dropout_key, model=model,
                         config=config, shards=shards)
  loss, batch_stats = out['loss'], out['batch_stats']
  # With flat updates, the norm of the concatenated gradient (the optimizer concatenates it
  # anyway): one reduction instead of one per leaf, which XLA:CPU compiles as a kernel
  # each (-7 s of compile unrolled).
  grad_norm = (jnp.linalg.norm(jax.flatten_util.ravel_pytree(grads)[0])
               if model.kernel_set.flat_updates else optax.tree.norm(grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # How often the global-norm clip fired: at the paper's clip of 2.0 it can act on every
  # step, making the step size the learning rate's alone.
  clipped = (grad_norm > config.grad_clip_norm) if config.grad_clip_norm > 0 else False
  if config.nonfinite_policy == 'skip':
    # Keep the old parameters and statistics; the step counter still advances so the
    # data stream moves past the bad batch. How to select is the kernel set's choice.
    params, opt_state, batch_stats = model.kernel_set.select_tree(
        finite, (params, opt_state, batch_stats),
        (state.params, state.opt_state, state.batch_stats))
  ema = optim.update_ema(state.ema_params, params, optim.ema_decay(config, state.step))
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=ema, skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  metrics = metrics_lib.TrainMetrics.single_from_model_output(
      loss=loss, grad_norm=grad_norm, learning_rate=optim.current_learning_rate(opt_state),
      pre_pool_zero_fraction=out['zero_fraction'],
      dead_unit_fraction=jnp.mean(out['dead_units'].astype(jnp.float32)),
      skipped_steps=new_state.skipped_steps, stage_stats=out['stage_stats'],
      clipped=jnp.asarray(clipped, jnp.float32),
      top1_error=out['top1_error'], top5_error=out['top5_error'])
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              model: Inception) -> metrics_lib.EvalMetrics:
  """Loss and top-k error of the raw and the EMA weights; padded examples masked."""
  images = augment.to_signed_unit_range(batch['image'], model.dtype)
  outputs = {}
  for prefix, params in (('', state.params), ('ema_', state.ema_params)):
    logits = model.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                         train=False)
    outputs[f'{prefix}loss'] = cross_entropy(logits, batch['label'], 0.0)
    for k, v in metrics_lib.classification_metrics(logits, batch['label']).items():
      outputs[prefix + k] = v
  return metrics_lib.EvalMetrics.single_from_model_output(mask=batch['mask'], **outputs)


def batch_spec(config: ml_collections.ConfigDict,
               batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes and dtypes of a global batch of `batch_size` that the steps take."""
  size = config.image_size
  return {'image': jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
          'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32),
          'mask': jax.ShapeDtypeStruct((batch_size,), jnp.float32)}
