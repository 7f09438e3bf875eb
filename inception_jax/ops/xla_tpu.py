"""The `xla_tpu` kernel set: the reference set, with what XLA:TPU compiles slowly done otherwise.

Each override is a compile-time measurement on a v5e slice (deviceless, `benchmarks/
compile_time.py`; figures in benchmarks/README.md, "Compile time"): the model's layers are
the same, their values equal the reference set's up to float rounding.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from inception_jax.ops.reference import NHWC, Reference, padding_pairs


@dataclasses.dataclass(frozen=True)
class XlaTpu(Reference):
  """The reference set with average pools as convolutions, per-parameter updates.

  XLA:TPU emits the relayouts into and out of one flat update vector slowly (a large share
  of a scanned step's compile: benchmarks/README.md, "Compile time"), so the optimizer
  updates each parameter.
  """
  name: ClassVar[str] = 'xla_tpu'
  flat_updates: ClassVar[bool] = False

  def avg_pool(self, x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
               padding: str, count_include_pad: bool) -> jax.Array:
    """The window sums as a depthwise convolution with a kernel of ones, in float32.

    XLA:TPU emits the gradient of a `reduce_window` sum (a padded reduce-window fused
    with its neighbours) in one to several hundred seconds, depending on the layouts it
    chose for the step; a convolution's gradient is a convolution, which it emits in
    seconds.
    """
    channels = x.shape[-1]
    pads = padding_pairs(x.shape[1:3], window, strides, padding)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    total = lax.conv_general_dilated(x, jnp.ones((*window, 1, channels), x.dtype), strides,
                                     pads, dimension_numbers=NHWC,
                                     feature_group_count=channels,
                                     preferred_element_type=acc)
    if count_include_pad:
      count = np.full(total.shape[1:3], float(np.prod(window)))
    else:  # How many of each window's taps fall inside the image.
      inside = np.pad(np.ones(x.shape[1:3]), pads)
      windows = np.lib.stride_tricks.sliding_window_view(inside, window)
      count = windows[::strides[0], ::strides[1]].sum(axis=(-2, -1))
    return (total / count[:, :, None].astype(acc)).astype(x.dtype)
