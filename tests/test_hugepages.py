"""Tests of inception_jax/hugepages.py: glibc's huge-page tunable for the entry points."""

import subprocess
import sys

import pytest

from inception_jax import hugepages
from tests.util import REPO

# In a child process: re-execute as main.py does, then fault in a fresh 256 MiB malloc
# buffer (glibc serves it with mmap) and print the tunable and the page faults it took.
CHILD = '''
from inception_jax import hugepages
hugepages.reexec_with_huge_pages()
import ctypes, os, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(buffer, 1, size)
print(os.environ.get('GLIBC_TUNABLES', ''), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def test_with_huge_pages_adds_the_tunable_and_keeps_the_users():
  assert hugepages.with_huge_pages({'A': '1'}) == {
      'A': '1', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert hugepages.with_huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}) == {
      'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}
  off = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2'}
  assert hugepages.with_huge_pages(off) == off


def test_applies_only_on_cpu_with_madvise_mode_and_a_recent_glibc():
  assert hugepages.applies('madvise', (2, 36), on_cpu=True)
  assert not hugepages.applies('madvise', (2, 31), on_cpu=True)
  assert not hugepages.applies('always', (2, 36), on_cpu=True)  # The kernel does it already.
  assert not hugepages.applies('never', (2, 36), on_cpu=True)
  assert not hugepages.applies('madvise', (2, 36), on_cpu=False)  # A GPU or TPU host.


def test_jax_runs_on_cpu_from_jax_platforms_or_the_device_nodes(tmp_path):
  gpu = tmp_path / 'nvidia0'
  gpu.write_text('')
  nodes = (str(tmp_path / 'nvidia[0-9]*'),)
  assert not hugepages.jax_runs_on_cpu({}, nodes)
  assert hugepages.jax_runs_on_cpu({'JAX_PLATFORMS': 'cpu'}, nodes)  # Forced onto the CPU.
  assert not hugepages.jax_runs_on_cpu({'JAX_PLATFORMS': 'tpu,cpu'}, ())
  assert hugepages.jax_runs_on_cpu({}, (str(tmp_path / 'accel[0-9]*'),))


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert hugepages._thp_mode(str(path)) == 'madvise'
  assert hugepages._thp_mode(str(tmp_path / 'missing')) is None


def _child(env):
  done = subprocess.run([sys.executable, '-c', CHILD], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60, check=True)
  tunables, faults = done.stdout.split()
  return tunables, int(faults)


@pytest.mark.skipif(not hugepages.applies(), reason='needs glibc >= 2.35 and THP "madvise"')
def test_reexec_backs_large_allocations_with_huge_pages():
  env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': REPO}
  tunables, faults = _child(env)
  assert tunables == 'glibc.malloc.hugetlb=1'
  # 4 KiB pages would take 65,536 faults for 256 MiB; 2 MiB pages take 128 (and a few
  # fall back where a huge page cannot be had at once).
  assert faults < 65536 // 8, faults
  tunables, faults = _child(dict(env, GLIBC_TUNABLES='glibc.malloc.hugetlb=0'))
  assert tunables == 'glibc.malloc.hugetlb=0'  # The user's choice stands: no re-exec.
  assert faults >= 65536 * 0.9, faults
