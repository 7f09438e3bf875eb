"""What the devices are doing, for every training log: speed, MFU, data wait, memory, traces.

Between two writes, `StepMonitor` turns the steps taken, their wall time and the time
spent waiting for data into images/s, achieved TFLOP/s and MFU per device (the step's
FLOPs from its HLO, the peak from `hardware.CHIPS`; on CPU a measured matrix-product
rate), and reads the devices' memory in use and its peak where the backend reports it
(`device.memory_stats()`; on CPU, this process's resident memory). `Profiler` captures a
`jax.profiler` trace of `config.profile_steps` for TensorBoard's profile plugin.
"""

from __future__ import annotations

import resource
import time
from typing import Any, Sequence

import jax
from absl import logging

from inception_jax import hardware


def step_flops(lowered: Any, num_devices: int) -> float:
  """FLOPs per device of one step, from its lowered (pre-partitioning) HLO."""
  return float((lowered.cost_analysis() or {}).get('flops', 0.0)) / num_devices


class StepMonitor:
  """Accumulates steps between writes; `scalars()` reports and restarts the interval."""

  def __init__(self, flops_per_device: float, batch_size: int,
               devices: Sequence[jax.Device]):
    self.flops_per_device = flops_per_device
    self.batch_size = batch_size
    self.devices = list(devices)
    chip = hardware.chip(self.devices[0])
    # CPU devices (forced host devices) share the cores that the peak was measured on.
    share = len(jax.local_devices()) if self.devices[0].platform == 'cpu' else 1
    self.peak = chip.peak_flops / share if chip else float('nan')
    self._restart()

  def _restart(self) -> None:
    self._start, self._steps, self._wait = time.perf_counter(), 0, 0.0

  def step(self, wait_s: float) -> None:
    self._steps += 1
    self._wait += wait_s

  def pause(self, seconds: float) -> None:
    """Leaves `seconds` (an evaluation, a checkpoint wait) out of the training time."""
    self._start += seconds

  def scalars(self) -> dict[str, float]:
    """The interval's figures (it is ended by a sync: the metrics were just computed)."""
    seconds = max(time.perf_counter() - self._start, 1e-9)
    steps = max(self._steps, 1)
    achieved = self.flops_per_device * self._steps / seconds
    out = {
        'perf/images_per_s': self.batch_size * self._steps / seconds,
        'perf/images_per_s_per_device': self.batch_size * self._steps / seconds /
                                        len(self.devices),
        'perf/tflops_per_device': achieved / 1e12,
        'perf/mfu': achieved / self.peak,
        'perf/data_wait_ms': 1e3 * self._wait / steps,
        'perf/data_wait_fraction': self._wait / seconds,
        **memory_scalars(),
    }
    self._restart()
    return out


def memory_scalars() -> dict[str, float]:
  """GB in use and peak on this process's first device, or this process's RSS on CPU."""
  stats = jax.local_devices()[0].memory_stats()
  if stats:
    return {'memory/device_gb': stats.get('bytes_in_use', 0) / 1e9,
            'memory/device_peak_gb': stats.get('peak_bytes_in_use', 0) / 1e9}
  with open('/proc/self/statm') as f:
    resident_pages = int(f.read().split()[1])
  return {'memory/host_rss_gb': resident_pages * resource.getpagesize() / 1e9,
          'memory/host_peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


class Profiler:
  """A `jax.profiler` trace of steps [first, last) into `workdir` (TensorBoard: Profile)."""

  def __init__(self, steps: Sequence[int], workdir: str):
    self.first, self.last = (tuple(steps) + (None, None))[:2] if steps else (None, None)
    self.workdir = workdir
    self.active = False

  def before(self, step: int) -> None:
    if step == self.first:
      jax.profiler.start_trace(self.workdir)
      self.active = True
      logging.info('Profiling steps %d-%d into %s', self.first, self.last - 1, self.workdir)

  def after(self, step: int, state: Any) -> None:
    if self.active and step + 1 >= self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
