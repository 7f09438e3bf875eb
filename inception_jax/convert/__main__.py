"""Converts released weights into a directory that training and evaluation read.

    python -m inception_jax.convert --from=keras \
        --source=~/.keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels.h5 \
        --model=inception_v3 --out=weights/keras_inception_v3
    python -m inception_jax.convert --from=slim --source=inception_v4.ckpt \
        --model=inception_v4 --out=weights/slim_inception_v4 [--drop_background]

Every tensor's name and shape is checked before anything is written; a file that
does not fit fails with the list of missing, unexpected and mis-shaped tensors.
"""

from __future__ import annotations

import os

from absl import app, flags

from inception_jax import cli
from inception_jax.convert import SOURCES, convert, save
from inception_jax.models import ARCHS

flags.DEFINE_enum('from', None, list(SOURCES), 'Who saved the file: Keras applications, '
                  'timm (safetensors) or TF-Slim (checkpoint).')
flags.DEFINE_string('source', None, 'The weight file (a TF-Slim checkpoint prefix for slim).')
flags.DEFINE_enum('model', None, list(ARCHS), 'The network the file holds.')
flags.DEFINE_string('out', None, 'Output directory: variables/ and model.json.')
flags.DEFINE_bool('drop_background', False, "Drop class 0 ('background') of a 1001-class "
                  'head (TF-Slim), leaving the 1000 ImageNet classes.')
flags.DEFINE_bool('avg_pool_include_pad', False, 'Average pools that count the zero '
                  'padding, as torchvision trained with (timm inception_v3.tv_in1k).')
flags.mark_flags_as_required(['from', 'source', 'model', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  with cli.one_line_errors():
    conversion = convert(FLAGS['from'].value, os.path.expanduser(FLAGS.source), FLAGS.model,
                         drop_background=FLAGS.drop_background,
                         avg_pool_include_pad=FLAGS.avg_pool_include_pad)
    save(conversion, FLAGS.out)
  print(conversion.report())
  print(f'wrote {os.path.abspath(FLAGS.out)}')


if __name__ == '__main__':
  app.run(main)
