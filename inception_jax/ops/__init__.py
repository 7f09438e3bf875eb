"""The kernel sets behind `model.kernels`: which primitives compute the paper's layers.

The model code (`inception_jax.models`) is written once; every conv, BatchNorm + ReLU,
max pool, bias add, channel sum and residual-block output goes through the kernel set
it was built with:
- `reference` (`reference.py`): plain lax/Flax ops, autodiff gradients;
- `xla_cpu` (`xla_cpu.py`): the forms XLA:CPU runs fastest, with their compiler options;
- `xla_tpu` (`xla_tpu.py`): the reference set with the forms XLA:TPU compiles fastest.

`auto` picks by the platform of the devices a step is compiled for, which is not
always this host's (`benchmarks/aot.py` compiles for TPU slices and GPU nodes from a
CPU). Each choice in `AUTO` is a measurement: `benchmarks/README.md`.
"""

from __future__ import annotations

from typing import Iterable

import jax

from inception_jax.ops.reference import Reference
from inception_jax.ops.xla_cpu import CONV_LIBRARIES, XlaCpu
from inception_jax.ops.xla_tpu import XlaTpu

KERNEL_SETS: dict[str, type[Reference]] = {'reference': Reference, 'xla_cpu': XlaCpu,
                                            'xla_tpu': XlaTpu}
KERNELS = ('auto', *KERNEL_SETS)
# Platform -> kernel set. On XLA:TPU the xla_cpu forms multiply a step's memory traffic by
# 2.5-3 and its temporaries by up to 2.3 (xla_tpu is the reference set compiled faster);
# on XLA:GPU neither set wins on every count.
AUTO = {'cpu': 'xla_cpu', 'gpu': 'reference', 'tpu': 'xla_tpu'}
_PLATFORM_NAMES = {'cuda': 'gpu', 'rocm': 'gpu'}

__all__ = ['AUTO', 'CONV_LIBRARIES', 'KERNELS', 'KERNEL_SETS', 'Reference', 'XlaCpu', 'XlaTpu',
           'check', 'get', 'platform_name', 'platform_of', 'resolve']


def platform_of(devices: Iterable[jax.Device] | None = None) -> str:
  """'cpu', 'gpu' or 'tpu': the platform of `devices` (default: this process's backend)."""
  platforms = {d.platform for d in devices} if devices is not None else {jax.default_backend()}
  if len(platforms) != 1:
    raise ValueError(f'devices of several platforms: {sorted(platforms)}')
  return platform_name(platforms.pop())


def platform_name(platform: str | None) -> str:
  """'cuda' and 'rocm' are 'gpu'; None is this process's backend."""
  platform = platform or jax.default_backend()
  return _PLATFORM_NAMES.get(platform, platform)


def check(kernels: str, cpu_conv_library: str = 'eigen') -> None:
  """Raises a ValueError naming a bad `kernels` or `cpu_conv_library` and what is allowed."""
  if kernels not in KERNELS:
    raise ValueError(f'kernels={kernels!r} is invalid; valid: {", ".join(KERNELS)}')
  if cpu_conv_library not in CONV_LIBRARIES:
    raise ValueError(f'cpu_conv_library={cpu_conv_library!r} is invalid; valid: '
                     f'{", ".join(CONV_LIBRARIES)}')


def resolve(kernels: str, platform: str | None = None) -> str:
  """The kernel set's name: `kernels` itself, or for 'auto' the choice for `platform`."""
  check(kernels)
  if kernels != 'auto':
    return kernels
  return AUTO.get(platform_name(platform), 'reference')


def get(kernels: str, cpu_conv_library: str = 'eigen') -> Reference:
  """The kernel set named `kernels` (one of `KERNEL_SETS`; 'auto' must be resolved)."""
  check(kernels, cpu_conv_library)
  if kernels == 'auto':
    raise ValueError("kernels='auto' is resolved by create_model for a platform first")
  if kernels == 'xla_cpu':
    return XlaCpu(cpu_conv_library)
  return KERNEL_SETS[kernels]()
