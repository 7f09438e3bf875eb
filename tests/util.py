"""Shared settings of the tests that train: a tiny network on the tiny offline dataset."""

import os
import subprocess
import sys

import ml_collections

from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """A narrow Inception-ResNet-v1, one block per grid, at 75 px on 'offline_shapes/tiny'
  (200 / 50 images): the smallest network with every kind of layer, fast to compile."""
  config = default.get_config()
  config.model.name = 'inception_resnet_v1'
  config.model.variant = 'paper'
  config.model.width_multiplier = 0.125
  config.model.repeats = (1, 1, 1)
  config.dataset = 'offline_shapes/tiny'
  config.data_dir = str(data_dir)
  config.image_size = 75
  config.batch_size = 8
  config.eval_batch_size = 8
  config.shuffle_buffer_size = 200
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 6
  config.steps_per_eval = 2
  config.checkpoint_every_steps = 2
  for key, value in overrides.items():
    target = config
    *path, last = key.split('.')
    for part in path:
      target = target[part]
    target[last] = value
  return config


def config_flags(config: ml_collections.ConfigDict) -> list[str]:
  """`--config.key=value` flags that turn configs/default.py into `config`."""
  flags = []
  base = default.get_config()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flags += [f'--config.{key}.{k}={v}' for k, v in value.items() if base[key][k] != v]
    elif base[key] != value:
      flags.append(f'--config.{key}={value}')
  return flags


def main_command(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, 'main.py'), '--config',
          os.path.join(REPO, 'configs', 'default.py'), f'--workdir={workdir}',
          f'--config.compilation_cache_dir={os.path.join(REPO, ".jax_cache")}'
          ] + config_flags(config)


def subprocess_env(num_devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['PYTHONPATH'] = REPO
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = 'true'  # Tiny models: compile time dominates.
  env.update(extra)
  return env


def run_main(config, workdir, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(config, workdir), env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=600, **kwargs)
