"""Test-wide JAX settings: several CPU devices, fast compiles, a persistent compile cache.

Set before JAX creates its backend, so they hold for every test module.
"""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top

# Tiny test models compile much faster without XLA's optimization passes.
jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(os.path.dirname(__file__), '.jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
