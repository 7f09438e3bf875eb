"""Deviceless compiles: the steps compiled for a TPU slice, and what their HLO must show.

The TPU tests need libtpu (`pip install -r requirements-tpu.txt`, in a venv of its own;
`.ci/run` makes one and runs this file there); elsewhere they are skipped and the CPU
ones run.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

from inception_jax import aot
from tests.util import REPO, subprocess_env, tiny_config

HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason='needs libtpu: pip install -r requirements-tpu.txt')
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')

HLO = '''
  %all-reduce-start.3 = (f32[1024]{0}, bf16[16,8]{1,0}) all-reduce-start(%a, %b), channel_id=1
  %all-reduce-done.3 = (f32[1024]{0}, bf16[16,8]{1,0}) all-reduce-done(%all-reduce-start.3)
  %all-reduce.7 = f32[3,3,32,64]{3,2,1,0:T(8,128)S(1)} all-reduce(%c), channel_id=2, to_apply=%add
  %all-reduce.9 = (f32[]{:T(128)}, f32[16]{0}, f32[2]{0}, f32[4]{0}, f32[8]{0}, /*index=5*/f32[5,5,16,96]{3,2,1,0}) all-reduce(%f), replica_groups=mesh['axis_0'=4] {'axis_0'}
  %all-gather.1 = s32[8]{0} all-gather(%d), dimensions={0}
  %fusion.2 = f32[8]{0} fusion(%e), kind=kLoop
  %gte.1 = f32[16]{0} get-tuple-element(%all-reduce.9), index=1
'''


def test_collectives_are_counted_as_ops_with_the_tensors_they_carry():
  # A combined (tuple) all-reduce is one op; index comments hold '=' signs.
  assert aot.collectives(HLO) == {
      'all-reduce': {'ops': 3, 'dtypes': {
          'f32': {'tensors': 8, 'bytes': 4 * (1024 + 3 * 3 * 32 * 64 + 1 + 16 + 2 + 4 + 8
                                               + 5 * 5 * 16 * 96)},
          'bf16': {'tensors': 1, 'bytes': 2 * 16 * 8}}},
      'all-gather': {'ops': 1, 'dtypes': {'s32': {'tensors': 1, 'bytes': 32}}}}


@pytest.mark.parametrize('target', ['v5e', 'v5e:2x2x2x2', 'h100:8', 'tpu:2x2', 'v9:2x2'])
def test_an_unknown_target_lists_the_valid_ones(target):
  with pytest.raises(ValueError, match=f"target='{target}' is invalid; valid: cpu, a TPU "):
    aot.parse_target(target)


@pytest.fixture
def optimized():
  """XLA's full pipeline, as a real run compiles (the tests turn most passes off)."""
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', True)


def _tiny(data_dir, **overrides):
  return tiny_config(data_dir, **{'model.name': 'inception_resnet_v2', 'model.variant': 'slim',
                                  'model.dtype': 'bfloat16', 'batch_size': 32,
                                  'eval_batch_size': 32, **overrides})


def test_the_cpu_target_compiles_with_the_cpu_kernels(tiny_data_dir):
  config = _tiny(tiny_data_dir)
  devices = aot.target_devices('cpu')
  model, (train,) = aot.compile_steps(config, devices, num_classes=10, names=['train'])
  assert model.kernels == 'xla_cpu'
  record = aot.analyze(train, devices, config.batch_size)
  assert record['devices'] == 4 and record['per_device_batch'] == 8
  assert record['gflop'] > 0 and record['temp_gb'] > 0 and record['fusions'] > 0
  assert aot.collective_count(record) > 0  # The gradients' all-reduce, at least.


@needs_libtpu
@pytest.mark.perf
@pytest.mark.parametrize('group', [0, 8])
def test_tpu_train_step_reduces_gradients_in_float32(tiny_data_dir, optimized, group):
  """bf16 compute on a v5e slice: no all-reduce carries bf16, BatchNorm's groups of the
  per-chip batch need no statistics all-reduce, and memory stays within its pinned bound."""
  config = _tiny(tiny_data_dir, **{'model.bn_group_size': group})
  devices = aot.target_devices('v5e:2x2')
  model, (train,) = aot.compile_steps(config, devices, num_classes=10, names=['train'])
  assert model.kernels == 'xla_tpu'  # auto, resolved for the TPU devices
  record = aot.analyze(train, devices, config.batch_size)
  assert record['device_kind'] == 'TPU v5 lite' and record['per_device_batch'] == 8
  assert aot.reduced_dtypes(record) <= {'f32', 'u32', 's32', 'pred'}, record['collectives']
  # Measured: 50 all-reduce ops with global BatchNorm (its statistics over the slice), 2
  # with per-chip groups (one combining the gradients, the groups' statistics for the
  # running averages and the metrics; one u32 flag).
  count = aot.collective_count(record)
  assert (count <= 2) if group else (20 <= count <= 60), record['collectives']
  assert record['temp_gb'] < 0.05


@needs_libtpu
@pytest.mark.perf
def test_a_lowered_compile_effort_places_nothing_in_on_chip_memory(tiny_data_dir, optimized):
  """Why `JAX_EXEC_TIME_OPTIMIZATION_EFFORT=-1` is no setting of the configs: libtpu then
  compiles the step without memory-space assignment's on-chip values (prefetches included)."""
  config = _tiny(tiny_data_dir, **{'model.scan_blocks': True})
  devices = aot.target_devices('v5e:2x2')
  records = {}
  for effort in (0.0, -1.0):
    jax.config.update('jax_exec_time_optimization_effort', effort)
    try:
      _, (train,) = aot.compile_steps(config, devices, num_classes=10, names=['train'])
      records[effort] = aot.analyze(train, devices, config.batch_size)
    finally:
      jax.config.update('jax_exec_time_optimization_effort', 0.0)
  assert records[0.0]['exec_time_optimization_effort'] == 0.0
  assert records[-1.0]['exec_time_optimization_effort'] == -1.0
  assert records[0.0]['on_chip_values'] > 100 and records[-1.0]['on_chip_values'] == 0


@needs_libtpu
def test_two_processes_compile_for_a_tpu_slice_at_once():
  """libtpu's lockfile is for the chips: a deviceless compile beside another one (a benchmark
  while the tests run) gets its topology too."""
  code = ('import sys; from inception_jax import aot; aot.target_devices("v5e:2x2"); '
          'print("held", flush=True); sys.stdin.read()')
  env = {**os.environ, 'TPU_SKIP_MDS_QUERY': '1', 'JAX_PLATFORMS': 'cpu'}
  env.pop('ALLOW_MULTIPLE_LIBTPU_LOAD', None)  # What a fresh shell has.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  holder = subprocess.Popen([sys.executable, '-c', code], cwd=root, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == 'held'
    second = subprocess.run([sys.executable, '-c', code], cwd=root, env=env, text=True,
                            input='', capture_output=True, timeout=300, check=False)
    assert second.returncode == 0 and second.stdout.strip() == 'held', second.stderr[-500:]
  finally:
    holder.communicate('', timeout=60)


@needs_libtpu
@pytest.mark.perf
def test_compile_time_profile_says_which_blocks_the_emission_went_to():
  """`compile_time.py --profile` reads libtpu's emission log: every thread second of it
  lands in one block and one kind, and the scanned step's repeated blocks in its loop body."""
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'compile_time.py'), '--json',
       '--profile', '--target=v5e:2x2', '--config=configs/default.py', '--settings=scanned',
       '--steps=train', '--config.model.width_multiplier=0.125',
       '--config.model.repeats=(2,2,2)', '--config.image_size=75'],
      env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  unrolled, scanned = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{')]
  for r in (unrolled, scanned):
    assert r['fusions_emitted'] > 50 and r['llo_instructions'] > r['fusions_emitted']
    for split in ('emit_s_by_stage', 'emit_s_by_kind'):
      assert sum(r[split].values()) == pytest.approx(r['emit_thread_s'], abs=0.1 * len(r[split]))
    assert r['emit_s_by_kind']['conv forward'] > 0 and r['emit_s_by_kind']['conv gradient'] > 0
    assert {'Stem', 'Mixed_5b', 'ReductionA', 'ReductionB'} <= set(r['emit_s_by_stage'])
    assert 0 <= r['retry_thread_s'] <= r['emit_thread_s']
    # The emission's wall seconds: no less than its thread seconds spread over its threads,
    # and inside the compile.
    assert 1 <= r['emit_threads'] <= r['host_cores']
    assert r['emit_thread_s'] / r['emit_threads'] - 0.01 <= r['emit_span_s'] < r['compile_s']
    assert r['other_s'] == pytest.approx(r['compile_s'] - r['emit_span_s'])
    assert r['projected_ratio']['112'] > 0
  assert {'InceptionResNetA', 'InceptionResNetB'} <= set(unrolled['emit_s_by_stage'])
  assert not any(s.startswith('scan:') for s in unrolled['emit_s_by_stage'])
  assert {'scan:InceptionResNetA', 'scan:InceptionResNetB'} <= set(scanned['emit_s_by_stage'])
