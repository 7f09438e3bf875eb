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

from inception_jax.ops.reference import Reference, padding_pairs, window_taps


@dataclasses.dataclass(frozen=True)
class XlaTpu(Reference):
  """The reference set with average pools as sums of shifted slices, per-parameter updates.

  XLA:TPU emits the relayouts into and out of one flat update vector slowly (57 s of a
  scanned step's compile, 10 s unrolled), so the optimizer updates each parameter.
  """
  name: ClassVar[str] = 'xla_tpu'
  flat_updates: ClassVar[bool] = False

  def avg_pool(self, x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
               padding: str, count_include_pad: bool) -> jax.Array:
    """The average of each window's taps, summed in (at least) float32, as strided slices.

    XLA:TPU emits the gradient of a `reduce_window` sum (a padded reduce-window) fused
    with its neighbours in one to seventy seconds, depending on the layouts it chose
    for the step; slices and adds, and their gradients (pads), fuse into loops it
    emits in about a second.
    """
    pads = padding_pairs(x.shape[1:3], window, strides, padding)
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_hw = tuple((p - k) // s + 1 for p, k, s in zip(padded.shape[1:3], window, strides))
    taps = list(window_taps(window, strides, out_hw))
    acc = jnp.promote_types(x.dtype, jnp.float32)
    total = sum(padded[:, rows, cols].astype(acc) for _, _, (rows, cols) in taps)
    if count_include_pad:
      count = np.full(out_hw, float(np.prod(window)))
    else:  # How many of each window's taps fall inside the image.
      inside = np.pad(np.ones(x.shape[1:3]), pads)
      count = sum(inside[rows, cols] for _, _, (rows, cols) in taps)
    return (total / count[:, :, None].astype(acc)).astype(x.dtype)
