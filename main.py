"""Trains and evaluates an Inception network from a config.

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/inception_v4_imagenet.py --workdir=runs/v4 \
        --config.model.residual_scale=0.2

Re-running the same command on the same workdir resumes from its newest checkpoint.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from inception_jax import cli, hugepages

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  # pylint: disable=g-import-not-at-top
  from inception_jax import parallel
  with cli.one_line_errors():  # Bad config or data, a non-finite stop: one line.
    # Before anything touches devices: multi-host init and the compile cache.
    parallel.maybe_initialize_distributed(
        config.distributed, heartbeat_timeout_s=config.distributed_heartbeat_timeout_s)
    import jax
    if config.compilation_cache_dir:
      jax.config.update('jax_compilation_cache_dir',
                        os.path.expanduser(config.compilation_cache_dir))
    from inception_jax import train
    logging.info('JAX process %d/%d, local devices %s', jax.process_index(),
                 jax.process_count(), jax.local_devices())
    train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  hugepages.reexec_with_huge_pages()  # XLA:CPU's per-step buffers (inception_jax/hugepages.py).
  app.run(main, flags_parser=cli.parse_flags)  # A mistyped --config.<key>: one line.
