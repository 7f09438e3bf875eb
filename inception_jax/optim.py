"""The optimizer of the paper (sec. 4) as an optax chain, its schedule, L2 and weight EMA."""

from __future__ import annotations

from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

OPTIMIZERS = ('rmsprop', 'sgd')


def learning_rate(config: ml_collections.ConfigDict) -> float:
  """The peak learning rate, optionally scaled linearly with the global batch."""
  lr = config.learning_rate
  if config.scale_learning_rate:
    lr *= config.batch_size / config.base_batch_size
  return lr


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up, then x`lr_decay_rate` every `lr_decay_epochs` epochs (staircase)."""
  peak = learning_rate(config)
  decay = optax.exponential_decay(
      peak, transition_steps=max(1, round(config.lr_decay_epochs * steps_per_epoch)),
      decay_rate=config.lr_decay_rate, staircase=True)
  warmup_steps = round(config.warmup_epochs * steps_per_epoch)
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     flat: bool) -> optax.GradientTransformation:
  """Clip by global norm, then TF-form RMSProp (or SGD with momentum).

  TF's RMSProp keeps epsilon inside the square root and starts the mean square
  at 1.0; `inject_hyperparams` keeps the current learning rate in the state so
  that it can be logged. `flat`: on one flat vector, the kernel set's
  `flat_updates` (the same updates; the state is laid out differently).
  """
  if config.optimizer == 'rmsprop':
    opt = optax.inject_hyperparams(optax.rmsprop)(
        learning_rate=schedule, decay=config.rmsprop_decay, eps=config.rmsprop_epsilon,
        initial_scale=1.0, eps_in_sqrt=True, momentum=config.momentum)
  else:
    opt = optax.inject_hyperparams(optax.sgd)(
        learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov)
  chain = ([optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm > 0
           else []) + [opt]
  # One flat vector instead of hundreds of leaves: XLA:CPU compiles a kernel per leaf and
  # per elementwise op, and compile time grows with the kernel count (benchmarks/README.md (f)).
  return optax.flatten(optax.chain(*chain)) if flat else optax.chain(*chain)


def relayout_opt_state(opt_state: Any, params: Any, flat: bool) -> Any:
  """The state of `create_optimizer(..., flat=not flat)` as that of `flat`: the same values.

  `optax.flatten` concatenates the leaves in `jax.tree.flatten` order, as `ravel_pytree`
  does: each parameter-shaped tree of the state becomes one vector, or back.
  """
  vector, unravel = jax.flatten_util.ravel_pytree(params)
  structure = jax.tree.structure(params)
  if flat:
    like_params = lambda x: jax.tree.structure(x) == structure
    return jax.tree.map(lambda x: jax.flatten_util.ravel_pytree(x)[0] if like_params(x) else x,
                        opt_state, is_leaf=like_params)
  return jax.tree.map(lambda x: unravel(x) if jnp.shape(x) == vector.shape else x, opt_state)


def current_learning_rate(opt_state: Any) -> jax.Array:
  """The learning rate `inject_hyperparams` applied at the last update."""
  return opt_state[-1].hyperparams['learning_rate']


def l2_loss(params: Any) -> jax.Array:
  """TF-Slim's weight decay: 0.5 * sum of squares of conv and dense kernels only."""
  flat = traverse_util.flatten_dict(params)
  return 0.5 * sum(jnp.sum(jnp.square(v)) for k, v in flat.items() if k[-1] == 'kernel')


def ema_decay(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """TF's ExponentialMovingAverage with num_updates: min(decay, (1 + t) / (10 + t)).

  The ramp makes the average useful in short runs instead of staying near init.
  """
  step = step.astype(jnp.float32)
  return jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: Any, params: Any, decay: jax.Array) -> Any:
  return optax.incremental_update(params, ema_params, 1.0 - decay)
