"""The benchmark scripts: their JSON records, tables and command-line errors."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import compile_time, peers, step_time
from inception_jax import models, ops
from tests.util import REPO, subprocess_env

SCRIPT = os.path.join(REPO, 'benchmarks', 'step_time.py')
REQUIRED = ('model', 'batch', 'image_size', 'compile_s', 'train_img_s', 'infer_img_s',
            'gflops_per_img', 'peak_rss_mb')


def test_flag_choices_are_the_models():
  assert (step_time.MODELS, step_time.KERNELS, step_time.CONV_LIBRARIES) == (
      models.ARCHS, ops.KERNELS, ops.CONV_LIBRARIES)


def _run(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, SCRIPT, *flags], env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_scanned_and_unrolled_records_and_table():
  # Two blocks per stage, so that a scanned body counted once would show in the FLOPs.
  proc = _run('--json', '--model=inception_resnet_v1', '--variant=paper',
              '--width_multiplier=0.125', '--image_size=75', '--batch=2', '--repeats=2,2,2',
              '--steps=1', '--warmup=0', '--scan_blocks=true,false')
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert [r['scan_blocks'] for r in records] == [True, False]
  assert {r['kernels'] for r in records} == {'xla_cpu'}  # auto, resolved on this CPU.
  for r in records:
    assert set(REQUIRED) <= set(r), set(REQUIRED) - set(r)
    assert (r['model'], r['batch'], r['image_size'], r['repeats']) == (
        'inception_resnet_v1', 2, 75, [2, 2, 2])
    for key in ('compile_s', 'train_img_s', 'infer_img_s', 'gflops_per_img', 'peak_rss_mb'):
      assert r[key] > 0, (key, r[key])
    assert r['first_step_s'] >= r['compile_s'] >= r['lower_s']
    assert r['peak_rss_mb'] >= r['train_peak_rss_mb'] >= r['rss_after_import_mb']
    # A train step is a forward and a backward pass (~2x the forward) plus the update.
    assert 2.5 < r['train_gflops_per_img'] / r['gflops_per_img'] < 5, r
  scanned, unrolled = records
  for key in ('params', 'gflops_per_img', 'train_gflops_per_img'):
    assert scanned[key] == unrolled[key], key

  table = step_time.format_table(records).splitlines()
  assert len(table) == 4 and all(line.startswith('| ') for line in table[:1] + table[2:])
  assert table[1] == '|' + '---|' * table[0].count(' | ') + '---|'
  heading = [cell.strip() for cell in table[0].strip('|').split('|')]
  assert heading[:6] == ['model', 'batch', 'size', 'width', 'blocks', 'scan']
  assert 'keras train img/s' not in heading  # Keras columns only with --compare_keras.
  assert [line.split(' | ')[5] for line in table[2:]] == ['1', '0']

  # A peer's columns and our ratio to it, for the records that have the peer's figures.
  timed = [dict(scanned, timm_train_img_s=scanned['train_img_s'] / 4,
                timm_infer_img_s=scanned['infer_img_s'] * 2), unrolled]
  table = step_time.format_table(timed).splitlines()
  heading = [cell.strip() for cell in table[0].strip('|').split('|')]
  assert heading[-4:] == ['timm train img/s', 'timm infer img/s', 'train x timm',
                          'infer x timm']
  assert 'timm 1st step s' not in heading  # No record has it.
  rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in table[2:]]
  assert rows[0][-2:] == ['4.00', '0.50'] and rows[1][-2:] == ['-', '-']


@pytest.mark.parametrize('flag, message', [
    ('--model=inception_v5', "argument --model: 'inception_v5' is invalid; give a "
                             'comma-separated list of: inception_v3, inception_v4'),
    ('--scan_blocks=true,maybe', "argument --scan_blocks: 'maybe' is not a boolean"),
    ('--kernels=fast', "argument --kernels: 'fast' is invalid; give a comma-separated list of: "
                       'auto, reference, xla_cpu, xla_tpu'),
    ('--image_size=299,64', '--image_size=299,64 is below the minimum of 75'),
    ('--repeats=1,1', '--repeats: repeats=(1, 1) is invalid for inception_v4'),
])
def test_bad_flags_give_one_line_errors(flag, message):
  extra = ['--model=inception_v4'] if flag.startswith('--repeats') else []
  proc = _run(*extra, flag)
  assert proc.returncode == 2 and proc.stdout == ''
  error = proc.stderr.strip().splitlines()[-1]
  assert error.startswith('step_time.py: error: ') and message in error, proc.stderr


@pytest.mark.parametrize('named', [True, False])
def test_compare_timm_names_the_interpreter_without_torch(named):
  # requirements.txt does not install PyTorch: a one-line error naming the interpreter.
  python = os.path.join(REPO, 'no_such_venv', 'bin', 'python') if named else sys.executable
  if not named and subprocess.run([python, '-c', 'import timm, torch'],
                                  capture_output=True).returncode == 0:
    pytest.skip('this interpreter has PyTorch and timm: no error to see')
  proc = _run('--model=inception_resnet_v2', '--compare_timm',
              *([f'--timm_python={python}'] if named else []))
  assert proc.returncode == 2 and proc.stdout == ''
  error = proc.stderr.strip().splitlines()[-1]
  assert error.startswith(f'step_time.py: error: --compare_timm: {python} cannot import '
                          'PyTorch and timm'), proc.stderr
  assert peers.TIMM_INSTALL in error


def _records(proc: subprocess.CompletedProcess) -> list[dict]:
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]


def test_input_pipeline_benchmark_reports_images_per_core():
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'input_pipeline.py'),
                         '--mode=train,eval', '--images=40', '--image_size=75', '--json'],
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  records = _records(proc)
  assert [r['mode'] for r in records] == ['train', 'eval']
  assert all(r['images_per_s'] > 0 and r['images_per_s_per_core'] == r['images_per_s']
             for r in records)


def test_resume_benchmark_times_both_formats(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'resume.py'),
                         '--dataset=offline_shapes/tiny', f'--data_dir={tmp_path}', '--batch=16',
                         '--json'], capture_output=True, text=True, timeout=600, cwd=REPO)
  records = _records(proc)
  assert [r['file_format'] for r in records] == ['tfrecord', 'array_record']
  for r in records:
    assert r['examples'] == 200 and r['position'] == 176  # 90% of 200, whole batches of 16.
    assert r['first_batch_s'] > 0 and r['first_batch_from_start_s'] > 0


GPU_CHECK = os.path.join(REPO, 'benchmarks', 'gpu_check.py')


def test_gpu_check_smoke_records_every_part(tmp_path):
  # The script a lent GPU host runs, on CPU at its smoke size: every part, one JSON line each.
  out = tmp_path / 'gpu_check.jsonl'
  # No wheels to install from and a fresh compilation cache: nothing outside tmp_path changes.
  proc = subprocess.run([sys.executable, GPU_CHECK, '--smoke', f'--out={out}', '--cache_dir=',
                         f'--wheels={tmp_path / "no_wheels"}'],
                        env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  host, *parts = records
  assert host['part'] == 'versions' and host['jax'] and host['device'] and host['python']
  assert [(r['part'], r.get('scan_blocks'), r.get('mode')) for r in parts] == [
      ('jax', False, None), ('train', False, None), ('timm', None, 'eager'),
      ('timm', None, 'compile'), ('jax', True, None)]
  cells = [r for r in parts if r['part'] == 'jax']
  for r in cells:
    assert 'error' not in r and 'skipped' not in r, r
    for key in ('compile_s', 'train_img_s', 'eval_img_s', 'train_tflop_s', 'train_mfu',
                'eval_mfu', 'peak_gb', 'xla_temp_gb', 'train_gflops_per_img'):
      assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert (r['batch'], r['image_size'], r['dtype']) == (4, 75, 'bfloat16')
  # The scanned network is credited with the unrolled one's FLOPs (XLA counts a body once).
  assert cells[0]['train_gflops_per_img'] == cells[1]['train_gflops_per_img']
  (train,) = [r for r in parts if r['part'] == 'train']
  assert train['loss_fell'] and train['last_loss'] < train['first_loss'], train
  assert math.isfinite(train['first_loss']) and train['cache_hits'] > 0  # The cell's steps.
  for r in parts:
    if r['part'] == 'timm':  # No CUDA here: skipped in one line, or no PyTorch at all.
      assert 'skipped' in r and 'error' not in r, r
  table = [line for line in proc.stdout.splitlines() if line.startswith('| ')]
  assert table[0].startswith('| part | batch | scan |') and len(table) == 1 + len(parts)
  assert 'training: loss' in proc.stdout and 'anchors:' in proc.stdout


@pytest.mark.parametrize('flag, message', [
    ('--batch=3', '--batch=3: each must be a positive multiple of the BatchNorm group (2 images)'),
    ('--timm=fast', "argument --timm: 'fast' is invalid"),
    ('--steps=0', '--steps=0 must be >= 1'),
])
def test_gpu_check_bad_flags_give_one_line_errors(flag, message):
  proc = subprocess.run([sys.executable, GPU_CHECK, '--smoke', flag], env=subprocess_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stdout == ''
  assert message in proc.stderr.strip().splitlines()[-1], proc.stderr


COMPILE_TIME = os.path.join(REPO, 'benchmarks', 'compile_time.py')


def _compile_time_eval(*flags: str) -> list[dict]:
  """compile_time.py's records of a narrow network's eval step on this CPU."""
  # Two blocks per stage, so that a scanned body counted once shows in the FLOPs.
  proc = subprocess.run(
      [sys.executable, COMPILE_TIME, '--json', '--target=cpu', '--config=configs/default.py',
       '--steps=eval', *flags, '--config.model.width_multiplier=0.125',
       '--config.model.repeats=(2,2,2)', '--config.eval_batch_size=2'],
      env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
  return _records(proc)


def test_compile_time_compares_settings_with_the_unrolled_step_and_restarts_from_cache():
  unrolled, scanned, low_effort = _compile_time_eval('--settings=scanned,scanned_low_effort',
                                                     '--restart')
  assert [(r['setting'], r['step'], r['scan_blocks'], r['remat'],
           r['exec_time_optimization_effort']) for r in (unrolled, scanned, low_effort)] == [
               ('unrolled', 'eval', False, False, 0.0), ('scanned', 'eval', True, False, 0.0),
               ('scanned_low_effort', 'eval', True, False, -1.0)]
  assert unrolled['compile_ratio'] == 1.0 and unrolled['temp_ratio'] == 1.0
  assert scanned['compile_ratio'] == scanned['compile_s'] / unrolled['compile_s']
  # The scanned step's own count misses all but one block of each stage: it reports the
  # unrolled step's FLOPs instead.
  assert scanned['gflop_counted'] < unrolled['gflop'] and scanned['gflop'] == unrolled['gflop']
  for r in (unrolled, scanned):
    assert r['compile_s'] > 0 and r['restart_compile_s'] > 0 and r['temp_gb'] >= 0


@pytest.mark.skipif(len(compile_time.HOST_CORES) < 2, reason='needs two cores to pin to')
def test_compile_time_pins_each_run_to_its_cores():
  records = _compile_time_eval('--settings=scanned', '--cores=2,1')
  # What the compiling process itself found it could run on.
  assert [(r['setting'], r['host_cores']) for r in records] == [
      ('unrolled', 2), ('scanned', 2), ('unrolled', 1), ('scanned', 1)]
  for r in records:
    base = next(b for b in records if (b['setting'], b['host_cores']) == ('unrolled',
                                                                          r['host_cores']))
    assert r['compile_ratio'] == r['compile_s'] / base['compile_s'] and r['compile_cpu_s'] > 0
    if r['host_cores'] == 1:  # One core cannot give more CPU seconds than wall seconds.
      assert r['compile_cpu_s'] <= r['compile_s'] + 0.2


def test_compile_time_projects_the_emission_spread_over_cores_the_rest_as_measured():
  # unrolled: 300 thread s of emission on 2 threads in 150 s, 100 s besides; 112 cores would
  # spread it to 2.7 s, but one of its fusions took 5 s. scanned: 360 in 180, 25 besides.
  made = {'unrolled': (250.0, 150.0, 300.0, 5.0), 'scanned': (205.0, 180.0, 360.0, 10.0)}
  records = [dict(target='v5e:2x2', step='train', setting=setting, host_cores=2,
                  compile_s=wall, compile_cpu_s=wall + emit, emit_span_s=span,
                  emit_thread_s=emit, emit_threads=2, longest_emit_s=longest,
                  emit_s_by_stage={'Stem': emit})
             for setting, (wall, span, emit, longest) in made.items()]
  records.append(dict(records[1], setting='scanned_remat', host_cores=1))  # No baseline...
  del records[-1]['emit_span_s'], records[-1]['emit_s_by_stage']           # ...not profiled.
  compile_time.project_cores(records)
  unrolled, scanned, unprofiled = records
  assert scanned['other_s'] == 25.0 and scanned['other_cpu_s'] == 205.0
  assert unrolled['projected_compile_s'] == pytest.approx({'4': 175.0, '8': 137.5,
                                                           '112': 105.0})
  assert scanned['projected_compile_s'] == pytest.approx({'4': 115.0, '8': 70.0, '112': 35.0})
  assert scanned['projected_ratio'] == pytest.approx({'4': 115 / 175, '8': 70 / 137.5,
                                                      '112': 35 / 105})
  # The table reads records back from JSON (--out) as well as in process.
  reread = [json.loads(json.dumps(r)) for r in records]
  assert compile_time.table(reread) == compile_time.table(records)
  assert 'projected_compile_s' not in unprofiled
  assert ('| v5e:2x2 | scanned | train | 2 | 205.0 | 180.0 (2) | 25.0 | 205.0 | 115.0 (0.66) '
          '| 70.0 (0.51) | 35.0 (0.33) |') in compile_time.table(records)
  assert ('| emit thread s | v5e:2x2 unrolled train, 2 cores | v5e:2x2 scanned train, 2 cores |\n'
          '|---|---|---|\n| Stem | 300 | 360 |') in compile_time.table(records)


@pytest.mark.parametrize('flags, message', [
    (['--settings=folded'], "argument --settings: 'folded' is invalid"),
    (['--cores=0'], "argument --cores: '0' is invalid"),
    (['--target=v5e:2x2', '--restart'], '--restart needs --target=cpu, not v5e:2x2'),
    (['--batch=8'], 'unrecognized arguments: --batch=8'),
    (['--target=v5e:2x2,cpu', '--profile'], "--profile reads libtpu's log: it needs TPU targets, "
                                            'not cpu'),
])
def test_compile_time_bad_flags_give_one_line_errors(flags, message):
  proc = subprocess.run([sys.executable, COMPILE_TIME, '--config=configs/default.py', *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and proc.stdout == ''
  error = proc.stderr.strip().splitlines()[-1]
  assert error.startswith('compile_time.py: error: ') and message in error, proc.stderr
