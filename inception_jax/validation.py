"""Config checks that run before anything compiles: one clear line per bad value."""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import ml_collections

from inception_jax import optim
from inception_jax.models import MIN_IMAGE_SIZE, create_model

NONFINITE_POLICIES = ('skip', 'stop')
FILE_FORMATS = ('tfrecord', 'array_record')
# Keys whose change does not make a workdir a different run (resuming with them is fine):
# the schedule's length, where things are, and how the same function is computed.
RESUMABLE_KEYS = ('num_epochs', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps', 'keep_checkpoints', 'steps_per_eval',
                  'allow_config_change', 'data_dir', 'manual_dir', 'distributed',
                  'distributed_heartbeat_timeout_s',
                  'compilation_cache_dir', 'eval_batch_size', 'model.kernels',
                  'model.cpu_conv_library', 'data_threads', 'data_ram_budget_gb',
                  'prefetch_batches', 'profile_steps', 'stop_if_dead_for_steps',
                  'model.scan_blocks', 'model.remat')


def _positive(config, key: str, integer: bool = False) -> None:
  value = config[key]
  kind = numbers.Integral if integer else numbers.Real
  if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
    raise ValueError(f'{key}={value!r} is invalid: must be a positive '
                     f'{"integer" if integer else "number"}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad value and what is allowed."""
  # The model options are checked by the model factory itself (names, ranges).
  create_model(num_classes=1, **config.model.to_dict())
  if config.optimizer not in optim.OPTIMIZERS:
    raise ValueError(f'optimizer={config.optimizer!r} is invalid; valid optimizers: '
                     f'{", ".join(optim.OPTIMIZERS)}')
  if not (isinstance(config.learning_rate, numbers.Real) and math.isfinite(config.learning_rate)
          and config.learning_rate > 0):
    raise ValueError(f'learning_rate={config.learning_rate!r} is invalid: must be a finite '
                     'number > 0')
  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints', 'image_size'):
    _positive(config, key, integer=True)
  if config.num_train_steps <= 0:
    _positive(config, 'num_epochs')
  if config.data_file_format not in FILE_FORMATS:
    raise ValueError(f'data_file_format={config.data_file_format!r} is invalid; valid: '
                     f'{", ".join(FILE_FORMATS)}')
  if config.nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f'nonfinite_policy={config.nonfinite_policy!r} is invalid; valid: '
                     f'{", ".join(NONFINITE_POLICIES)}')
  stop = config.stop_if_dead_for_steps
  if not isinstance(stop, numbers.Integral) or isinstance(stop, bool) or stop < 0:
    raise ValueError(f'stop_if_dead_for_steps={stop!r} is invalid: must be an integer >= 0 '
                     '(0: never stop)')
  for key in ('label_smoothing', 'eval_crop_fraction'):
    if not 0.0 <= config[key] <= 1.0:
      raise ValueError(f'{key}={config[key]!r} is invalid: must be in [0, 1]')
  if not 0.0 <= config.holdout_fraction < 1.0:
    raise ValueError(f'holdout_fraction={config.holdout_fraction!r} is invalid: must be in '
                     '[0, 1)')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f'ema_decay={config.ema_decay!r} is invalid: must be in [0, 1)')
  if config.init_from and not os.path.isdir(config.init_from):
    raise ValueError(f'init_from={config.init_from!r} is not a directory: write one with '
                     'python -m inception_jax.convert (see configs/finetune.py), or set '
                     'init_from=""')
  steps = tuple(config.profile_steps)
  if steps and (len(steps) != 2 or not 0 < steps[0] < steps[1]):
    raise ValueError(f'profile_steps={steps!r} is invalid: give () or (first, last) with '
                     '0 < first < last')
  _positive(config, 'prefetch_batches', integer=True)
  _positive(config, 'grad_accum_steps', integer=True)
  micro, group = config.batch_size // config.grad_accum_steps, config.model.bn_group_size
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(f'grad_accum_steps={config.grad_accum_steps} does not divide '
                     f'batch_size={config.batch_size}: give a divisor of the batch')
  if group and micro % group:
    raise ValueError(f'model.bn_group_size={group} does not divide the micro-batch of {micro} '
                     f'images (batch_size / grad_accum_steps): give a divisor of it, or 0')
  check_image_size(config)


def check_image_size(config: ml_collections.ConfigDict) -> None:
  if config.image_size < MIN_IMAGE_SIZE:
    raise ValueError(f'image_size={config.image_size} is below the minimum of {MIN_IMAGE_SIZE} '
                     f'for {config.model.name} (its stem and two reductions need 75 px)')


def config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = '') -> list[str]:
  """'key: old -> new' for each value that differs, ignoring `RESUMABLE_KEYS`."""
  changes = []
  for key in sorted(set(saved) | set(current)):
    if prefix + key in RESUMABLE_KEYS:
      continue
    old, new = saved.get(key), current.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      changes += config_diff(old, new, f'{prefix}{key}.')
    elif old != new:
      changes.append(f'{prefix}{key}: {old!r} -> {new!r}')
  return changes
