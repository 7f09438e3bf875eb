"""Test-wide JAX settings: several CPU devices, fast compiles, a persistent compile cache.

Set before JAX creates its backend, so they hold for every test module.
"""
import os

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top

# Tiny test models compile much faster without XLA's optimization passes.
jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(os.path.dirname(__file__), '.jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def pytest_configure(config: pytest.Config) -> None:
  config.addinivalue_line(
      'markers', "perf: pins XLA's compiler output (HLO text; fusion, transpose or collective "
      'counts), not results; .ci/run runs these apart (-m perf), so that a JAX that compiles '
      'differently shows apart from a broken result')
  config.addinivalue_line(
      'markers', 'tf: needs tensorflow and tensorflow-datasets (requirements.txt), skipped '
      'without them (tests/conftest.py marks the users of the tiny offline dataset too)')
