"""The model zoo: `create_model(name, ...)` builds any of the four networks."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax.numpy as jnp

from inception_jax import ops
from inception_jax.models.networks import (ARCHS, MIN_IMAGE_SIZE, STEM_STRIDES, VARIANTS,
                                           Inception, check_repeats, stack_repeats,
                                           stem_has_pool_switch, unstack_repeats)

__all__ = ['ARCHS', 'VARIANTS', 'MIN_IMAGE_SIZE', 'Inception', 'create_model', 'model_options',
           'stack_repeats', 'unstack_repeats', 'upgrade_options']

# float16 would need loss scaling; bfloat16 has float32's range and needs none.
_DTYPES = ('float32', 'bfloat16')
# Options of earlier versions that chose how XLA:CPU computes the same function; a config
# or run directory that has them still builds its network.
_LEGACY_KERNEL_OPTIONS = ('conv1x1_as_dot', 'conv_backward_nhwc', 'cpu_kernels')


def model_options() -> tuple[str, ...]:
  """The keyword options `create_model` accepts."""
  return tuple(f.name for f in dataclasses.fields(Inception)
               if f.name not in ('arch', 'parent', 'name', 'platform'))


def upgrade_options(options: dict[str, Any]) -> dict[str, Any]:
  """`create_model` options as saved by an earlier version, in today's terms.

  The CPU-kernel switches of earlier versions became `kernels` and `cpu_conv_library`:
  they chose how the same function is computed, so they are dropped, and an explicit
  conv library is kept as `cpu_conv_library`.
  """
  options = dict(options)
  library = options.pop('cpu_kernels', 'auto')
  if library in ops.CONV_LIBRARIES:
    options.setdefault('cpu_conv_library', library)
  for key in _LEGACY_KERNEL_OPTIONS:
    options.pop(key, None)
  return options


def create_model(name: str, *, num_classes: int = 1000, platform: str | None = None,
                 **overrides: Any) -> Inception:
  """Returns the network `name` as a Flax module.

  Args:
    name: one of `ARCHS`.
    num_classes: size of the classifier.
    platform: 'cpu', 'gpu' or 'tpu', where its steps will run: `kernels='auto'` picks
      that platform's kernel set (`inception_jax.ops.AUTO`). Default: this process's
      default backend.
    **overrides: any of `model_options()`: `variant` ('paper' or 'slim'),
      `residual_scale` (a float or one per grid: 35x35, 17x17, 8x8), `use_residual`,
      `width_multiplier`, `repeats` (A, B, C block counts), `bn_scale`, `bn_momentum`,
      `bn_epsilon`, `bn_group_size` (images per BatchNorm statistics group, 0: the whole
      batch), `aux_logits`, `dropout_rate`, `dtype`, `scan_blocks`, `remat`,
      `kernels` ('auto', 'reference', 'xla_cpu' or 'xla_tpu'), `cpu_conv_library` ('eigen' or
      'ynnpack', for 'xla_cpu'), `stem_stride` (1 or 2), `stem_pool` (the
      lower-resolution study of the v3 paper sec. 9) and `avg_pool_include_pad`
      (torchvision's average pools, which count the padding).

  Raises:
    ValueError: for an unknown name or option, or an option value out of range.
  """
  options = _checked_options(name, num_classes, overrides)
  options['platform'] = ops.platform_name(platform)
  options['kernels'] = ops.resolve(options.get('kernels', 'auto'), options['platform'])
  return Inception(arch=name, num_classes=int(num_classes), **options)


def _checked_options(name: str, num_classes: Any, overrides: dict[str, Any]) -> dict[str, Any]:
  """`overrides` checked (ValueError names the bad value) and normalised for `Inception`."""
  if name not in ARCHS:
    raise ValueError(f'unknown model {name!r}; valid models: {", ".join(ARCHS)}')
  unknown = sorted(set(overrides) - set(model_options()))
  if unknown:
    raise ValueError(f'unknown model option(s) {", ".join(unknown)}; valid options: '
                     f'{", ".join(model_options())}')
  options = dict(overrides)
  variant = options.get('variant', 'slim')
  if variant not in VARIANTS:
    raise ValueError(f'variant={variant!r} is invalid; valid variants: {", ".join(VARIANTS)}')
  if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f'num_classes={num_classes!r} must be a positive integer')
  _check_layout(options, name, variant)
  _check_numbers(options)
  ops.check(options.get('kernels', 'auto'), options.get('cpu_conv_library', 'eigen'))
  return options


def _check_layout(options: dict[str, Any], name: str, variant: str) -> None:
  """Block repeats and the stem: what the network's layers are."""
  # () in a config ([] once saved as JSON): the paper's repeats (None can't be overridden).
  if options.get('repeats') in ((), []):
    options['repeats'] = None
  if 'repeats' in options and options['repeats'] is not None:
    check_repeats(options['repeats'], name, variant)
    options['repeats'] = tuple(int(r) for r in options['repeats'])
  stride = options.get('stem_stride', 2)
  if isinstance(stride, bool) or stride not in STEM_STRIDES:
    raise ValueError(f'stem_stride={stride!r} is invalid; valid: '
                     f'{", ".join(map(str, STEM_STRIDES))}')
  if not options.get('stem_pool', True) and not stem_has_pool_switch(name, variant):
    raise ValueError(f'stem_pool=False is invalid for {name} ({variant}): its first max pool is '
                     'a branch of Mixed_3a (Fig. 3); it applies to inception_v3, '
                     'inception_resnet_v1 and inception_resnet_v2 (slim)')


def _check_numbers(options: dict[str, Any]) -> None:
  """Widths, residual scales, BatchNorm groups, dropout and the compute dtype."""
  _check_positive('width_multiplier', options.get('width_multiplier', 1.0))
  scale = options.get('residual_scale', 1.0)
  scales = (scale,) if isinstance(scale, numbers.Real) else tuple(scale)
  if len(scales) not in (1, 3):
    raise ValueError(f'residual_scale={scale!r} must be one float or three (35x35, 17x17, '
                     '8x8 grids)')
  for s in scales:
    _check_positive('residual_scale', s)
  if 'residual_scale' in options:  # A 1-tuple is what `--config.model.residual_scale=0.2` gives.
    options['residual_scale'] = float(scales[0]) if len(scales) == 1 else tuple(
        float(s) for s in scales)
  group = options.get('bn_group_size', 0)
  if isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 0:
    raise ValueError(f'bn_group_size={group!r} is invalid: give the images per BatchNorm '
                     'statistics group, an integer >= 0 (0: the whole batch)')
  rate = options.get('dropout_rate', 0.2)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout_rate={rate!r} must be in [0, 1)')
  if 'dtype' in options:
    dtype = options['dtype']
    if isinstance(dtype, str) and dtype not in _DTYPES:
      raise ValueError(f'dtype={dtype!r} is invalid; valid dtypes: {", ".join(_DTYPES)}')
    options['dtype'] = jnp.dtype(dtype)


def _check_positive(key: str, value: Any) -> None:
  if not isinstance(value, numbers.Real) or not value > 0:
    raise ValueError(f'{key}={value!r} must be a number > 0')
