"""Every command-line entry point: a bad value or a missing file is one line, no traceback."""

import os
import subprocess
import sys

import pytest

from tests.util import REPO, subprocess_env

NOT_WEIGHTS = 'not_a_weight_file.h5'


@pytest.mark.parametrize('args, message', [
    (['main.py', '--config=configs/default.py', '--workdir={tmp}/run',
      '--config.model.kernels=fast'], "kernels='fast' is invalid; valid: auto, reference, xla_cpu, xla_tpu"),
    (['main.py', '--config=configs/default.py', '--workdir={tmp}/run',
      '--config.init_from={tmp}/missing'], "init_from='{tmp}/missing' is not a directory"),
    (['-m', 'inception_jax.convert', '--from=keras', f'--source={{tmp}}/{NOT_WEIGHTS}',
      '--model=inception_v3', '--out={tmp}/w'], f'cannot read {{tmp}}/{NOT_WEIGHTS} as a Keras'),
    (['-m', 'inception_jax.convert', '--from=timm', '--source={tmp}/missing.safetensors',
      '--model=inception_v3', '--out={tmp}/w'],
     'cannot read {tmp}/missing.safetensors as safetensors'),
    (['-m', 'experiments.evaluate', '--workdir={tmp}/missing'],
     '{tmp}/missing is not a run directory'),
    (['-m', 'experiments.summarize', '{tmp}/missing'], '{tmp}/missing'),
    (['-m', 'experiments.plot_curves', '{tmp}/missing'], '{tmp}/missing'),
    (['-m', 'experiments.sweep', '--config=configs/sweeps/residual_scale.py',
      '--workdir={tmp}/sweep', '--trial_index=99'], 'trial_index=99 is invalid'),
    (['-m', 'experiments.sweep', '--config=configs/sweeps/residual_scale.py',
      '--workdir={tmp}/sweep', '--config.learning_rat=0.1'],
     '--config.learning_rat is not a config key; did you mean --config.learning_rate?'),
    (['benchmarks/aot.py', '--config=configs/default.py', '--config.model.kernelz=xla_cpu'],
     '--config.model.kernelz is not a config key; did you mean --config.model.kernels?'),
    (['-m', 'inception_jax.models.summary', 'inception_v5'],
     "unknown model 'inception_v5'; valid models: inception_v3"),
])
def test_bad_input_ends_with_one_line_and_no_traceback(tmp_path, args, message):
  (tmp_path / NOT_WEIGHTS).write_text('this is not HDF5')
  args = [a.format(tmp=tmp_path) for a in args]
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert message.format(tmp=tmp_path) in last, proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / 'w')  # Nothing written for a conversion that failed.


@pytest.mark.parametrize('override, message', [
    ('--config.learning_rat=0.1',
     '--config.learning_rat is not a config key; did you mean --config.learning_rate?'),
    ('--config.modl.name=inception_v3',
     '--config.modl.name is not a config key; did you mean --config.model.name?'),
    ('--config.zzzzz=1', '--config.zzzzz is not a config key'),
])
def test_a_mistyped_config_key_is_one_line(tmp_path, override, message):
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/default.py', override,
                         f'--workdir={tmp_path}/run'], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert [line for line in proc.stderr.splitlines() if line.strip()] == [f'error: {message}']
  assert not os.path.exists(tmp_path / 'run')  # Stopped before anything was written.
