"""The chips a step may run on: peak bf16 FLOP/s, memory bandwidth and capacity.

For the roofline of `benchmarks/aot.py` and the MFU in every training log. Figures
are the vendors' spec sheets (dense bf16, no sparsity); a CPU's peak is measured.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str               # as in target names: 'v5e', 'h100'
  peak_flops: float       # dense bf16 FLOP/s
  hbm_bytes_s: float      # memory bandwidth, bytes/s
  hbm_bytes: float        # memory per chip, bytes

  @property
  def ridge(self) -> float:
    """FLOP/byte above which a step is bound by the matrix units, not memory traffic."""
    return self.peak_flops / self.hbm_bytes_s


# By jax's `device_kind`.
CHIPS = {
    'TPU v4': Chip('v4', 275e12, 1228e9, 32e9),
    'TPU v5 lite': Chip('v5e', 197e12, 819e9, 16e9),
    'TPU v5': Chip('v5p', 459e12, 2765e9, 95e9),
    'TPU v6 lite': Chip('v6e', 918e12, 1640e9, 32e9),
    'NVIDIA A100-SXM4-80GB': Chip('a100', 312e12, 2039e9, 80e9),
    'NVIDIA H100 80GB HBM3': Chip('h100', 989e12, 3350e9, 80e9),
    'NVIDIA H200': Chip('h200', 989e12, 4800e9, 141e9),
}


def chip(device: jax.Device) -> Chip | None:
  """The spec of `device`, or for a CPU a measured peak; None for an unknown accelerator."""
  if device.platform == 'cpu':
    return Chip('cpu', cpu_peak_flops(), float('nan'), float('nan'))
  return CHIPS.get(device.device_kind)


@functools.lru_cache(maxsize=None)
def cpu_peak_flops(size: int = 1024, repeats: int = 5) -> float:
  """This CPU's float32 matrix-product rate (FLOP/s), the best of a few timed products.

  A CPU has no spec-sheet figure that XLA reaches; the rate of a large dot on all cores
  is what its convolutions approach (the development machines' convs ran at 80-100% of
  it), so MFU on CPU is measured against it.
  """
  device = jax.devices('cpu')[0]
  a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best
