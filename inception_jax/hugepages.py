"""Transparent huge pages for the buffers XLA:CPU allocates on every step.

XLA:CPU allocates each execution's temporaries afresh: 1.7-3.3 GB for the full
IR-v2 train step at batch 8. glibc's malloc serves them with mmap and returns
them with munmap, so with 4 KiB pages every step faults in 450-650k new pages,
about a fifth of the step on a 2-core CPU (benchmarks/README.md (o)). glibc
(2.35 and later) asks the kernel for 2 MiB pages for those mappings when its
tunable `glibc.malloc.hugetlb=1` is set. glibc reads tunables only when a
process starts, so the entry points re-execute themselves once with it, where JAX
will run on the CPU: a GPU or TPU host's step buffers live on the device.

Turn it off with `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` in the environment.
Imports no jax: it runs before jax is imported, and in `benchmarks/step_time.py`'s
parent process, which never imports jax.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Mapping

TUNABLE = 'glibc.malloc.hugetlb'
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'
MIN_GLIBC = (2, 35)
# Device nodes of NVIDIA and AMD GPUs and of TPU VMs (v4 and v5p: accel; v5e and v6e: vfio).
DEVICE_NODES = {'gpu': ('/dev/nvidia[0-9]*', '/dev/kfd'),
                'tpu': ('/dev/accel[0-9]*', '/dev/vfio/[0-9]*')}
ACCELERATOR_DEVICES = DEVICE_NODES['gpu'] + DEVICE_NODES['tpu']


def accelerator_kind(nodes: Mapping[str, tuple[str, ...]] = DEVICE_NODES) -> str | None:
  """'gpu' or 'tpu' by the device nodes on this host, or None (CPU only)."""
  return next((kind for kind, patterns in nodes.items()
               if any(glob.glob(p) for p in patterns)), None)


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()  # 'glibc 2.36'
  except (AttributeError, OSError, ValueError):  # Not glibc (musl, macOS, Windows).
    return None
  return tuple(int(p) for p in version.split('.')[:2]) if name == 'glibc' else None


def _thp_mode(path: str = THP_MODE) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index('[') + 1:text.index(']')] if '[' in text else None


def jax_runs_on_cpu(env: Mapping[str, str] | None = None,
                    devices: tuple[str, ...] = ACCELERATOR_DEVICES) -> bool:
  """Whether JAX will compute on the CPU: `JAX_PLATFORMS` says so, or no GPU or TPU is here.

  Decided without importing jax, from the first platform of `JAX_PLATFORMS` or else
  from the accelerators' device nodes.
  """
  env = os.environ if env is None else env
  platforms = env.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not any(glob.glob(pattern) for pattern in devices)


def applies(thp_mode: str | None = None, glibc: tuple[int, ...] | None = None,
            on_cpu: bool | None = None) -> bool:
  """Whether the tunable changes anything here: JAX on the CPU, glibc >= 2.35 and THP in
  'madvise' mode.

  In 'always' mode the kernel already backs large mappings with huge pages; in 'never'
  mode nothing can.
  """
  thp_mode = _thp_mode() if thp_mode is None else thp_mode
  glibc = _glibc_version() if glibc is None else glibc
  on_cpu = jax_runs_on_cpu() if on_cpu is None else on_cpu
  return on_cpu and thp_mode == 'madvise' and glibc is not None and glibc >= MIN_GLIBC


def with_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
  """A copy of `env` whose GLIBC_TUNABLES turns huge pages on for malloc's mappings.

  A GLIBC_TUNABLES that already sets the tunable is left as it is: the way to turn
  this off is `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`.
  """
  env = dict(env)
  tunables = [t for t in env.get('GLIBC_TUNABLES', '').split(':') if t]
  if not any(t.split('=')[0] == TUNABLE for t in tunables):
    env['GLIBC_TUNABLES'] = ':'.join(tunables + [f'{TUNABLE}=1'])
  return env


def reexec_with_huge_pages() -> None:
  """Re-executes this Python process with `with_huge_pages(os.environ)` where it applies.

  Call it in a script's `__main__` block before any work, and before heavy imports: the
  process is replaced (same pid, same arguments), and what it had imported or started is
  gone. It returns at once where the environment already has the tunable or where it
  would change nothing.
  """
  env = with_huge_pages(os.environ)
  if env == dict(os.environ) or not applies():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
