"""TensorFlow only where it is used: the JAX side imports and trains without it.

The subprocesses see neither TensorFlow nor TFDS (a `sitecustomize` blocks their import, as
on a host that never installed them), whether or not this venv has them.
"""

import os
import subprocess
import sys

import pytest

from inception_jax import extras
from tests.util import REPO, subprocess_env

# Every module that must import on a JAX-only host (requirements-core.txt).
JAX_SIDE = ('inception_jax.train', 'inception_jax.checkpointing', 'inception_jax.metrics',
            'inception_jax.convert', 'inception_jax.aot', 'clu.periodic_actions',
            'experiments.evaluate', 'experiments.summarize', 'experiments.plot_curves',
            'experiments.plot_phase', 'experiments.sweep', 'benchmarks.step_time')
INSTALL_LINE = ("error: dataset='offline_shapes' needs tensorflow and tensorflow-datasets: "
                'pip install -r requirements.txt')


def without_tensorflow(tmp_path, args, **kwargs) -> subprocess.CompletedProcess:
  (tmp_path / 'sitecustomize.py').write_text(
      "import sys\nsys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n")
  env = subprocess_env(PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
  return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300, **kwargs)


def test_the_jax_side_imports_without_tensorflow(tmp_path):
  check = (f'import importlib, sys\nfor m in {JAX_SIDE!r}: importlib.import_module(m)\n'
           "assert sys.modules['tensorflow'] is None, 'TensorFlow was imported'")
  proc = without_tensorflow(tmp_path, ['-c', check])
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_tensorflow_dataset_without_tensorflow_names_what_to_install(tmp_path):
  proc = without_tensorflow(tmp_path, ['main.py', '--config=configs/default.py',
                                       f'--workdir={tmp_path}/run'])
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == INSTALL_LINE, (
      proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr


def test_required_turns_only_the_named_packages_into_one_line():
  with pytest.raises(ValueError, match=r'^--from=slim needs tensorflow: pip install -r '
                                       r'requirements\.txt$'):
    with extras.required('--from=slim', 'tensorflow'):
      raise ModuleNotFoundError("No module named 'tensorflow.python'", name='tensorflow.python')
  with pytest.raises(ModuleNotFoundError):  # Anything else missing is a broken install.
    with extras.required('--from=slim', 'tensorflow'):
      raise ModuleNotFoundError("No module named 'wrapt'", name='wrapt')
