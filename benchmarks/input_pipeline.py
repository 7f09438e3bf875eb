"""Images per second per host core of the input pipeline's preprocessing, on ImageNet-like JPEGs.

    python benchmarks/input_pipeline.py                    # one core, every mode
    python benchmarks/input_pipeline.py --cores=1,2 --json

JPEGs of about ImageNet's average size (400x350, quality 90, smooth content with noise:
about 60 KB each) are made on the spot. Each mode maps the host preprocessing over them
in a tf.data pipeline pinned to `--cores` threads (a private thread pool, one intra-op
thread per core), after a warm-up:
- `train`: what training runs on the host now, the Inception crop decoded from the JPEG,
  resized, flipped, as uint8 (the devices scale it and distort its colours);
- `train_on_host_colour`: the same with TF-Slim's colour distortion and the scaling to
  [-1, 1] on the host in float32, as before the devices took them over;
- `eval`: the central crop, resized, uint8;
- `decode_crop`: the crop decoded from the JPEG alone, the floor of the other modes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common

MODES = ('train', 'train_on_host_colour', 'eval', 'decode_crop')
COLUMNS = (('mode', 'mode', '{}'), ('cores', 'cores', '{}'), ('image size', 'image_size', '{}'),
           ('img/s', 'images_per_s', '{:.0f}'), ('img/s per core', 'images_per_s_per_core', '{:.0f}'),
           ('mean JPEG KB', 'jpeg_kb', '{:.0f}'))


def make_jpegs(count: int, height: int = 350, width: int = 400):
  """`count` JPEG strings of smooth random images with noise (ImageNet's typical size)."""
  import numpy as np
  import tensorflow as tf
  rng = np.random.default_rng(0)
  jpegs = []
  for _ in range(count):
    coarse = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse[None], [height, width], method='bicubic')[0].numpy()
    image = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    jpegs.append(tf.io.encode_jpeg(image, quality=90).numpy())
  return jpegs


def preprocess_fn(mode: str, image_size: int):
  import tensorflow as tf
  from inception_jax.data import preprocessing as p

  def host_colour(image, seed):  # TF-Slim's fast-mode distortion, float32 on the host.
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    image = tf.cast(image, tf.float32) / 255.0
    image = tf.image.stateless_random_brightness(image, 32.0 / 255.0, seeds[0])
    image = tf.image.stateless_random_saturation(image, 0.5, 1.5, seeds[1])
    image = tf.image.stateless_random_hue(image, 0.2, seeds[2])
    image = tf.image.stateless_random_contrast(image, 0.5, 1.5, seeds[3])
    return tf.clip_by_value(image, 0.0, 1.0) * 2.0 - 1.0

  def fn(index, jpeg):
    seed = tf.stack([tf.constant(0, tf.int64), index])
    if mode == 'train':
      return p.preprocess_for_train(jpeg, seed, image_size)
    if mode == 'train_on_host_colour':
      return host_colour(p.preprocess_for_train(jpeg, seed, image_size), seed)
    if mode == 'eval':
      return p.preprocess_for_eval(jpeg, image_size)
    return p.decode_and_crop(jpeg, lambda shape: p.distorted_crop_window(shape, seed))
  return fn


def measure(mode: str, cores: int, jpegs, image_size: int, images: int) -> dict:
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
  ds = tf.data.Dataset.zip(tf.data.Dataset.range(10**9), ds)
  ds = ds.map(preprocess_fn(mode, image_size), num_parallel_calls=cores)
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  it = iter(ds.with_options(options).prefetch(2 * cores))
  for _ in range(max(32, images // 10)):  # Warm-up: threads started, kernels loaded.
    next(it)
  start = time.perf_counter()
  for _ in range(images):
    next(it)
  rate = images / (time.perf_counter() - start)
  return {'mode': mode, 'cores': cores, 'image_size': image_size, 'images': images,
          'images_per_s': rate, 'images_per_s_per_core': rate / cores,
          'jpeg_kb': sum(map(len, jpegs)) / len(jpegs) / 1e3, 'tensorflow': tf.__version__}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--mode', type=common.list_of(str, MODES), default=list(MODES))
  p.add_argument('--cores', type=common.list_of(int), default=[1],
                 help='host threads for preprocessing (each mode runs once per value)')
  p.add_argument('--image_size', type=int, default=299)
  p.add_argument('--images', type=int, default=1000, help='timed images per measurement')
  p.add_argument('--json', action='store_true', help='one JSON object per measurement')
  p.add_argument('--out', default='', help='also append the JSON lines to this file')
  args = p.parse_args(argv)
  for name in ('image_size', 'images'):
    if getattr(args, name) < 1:
      p.error(f'--{name}={getattr(args, name)} must be positive')
  if min(args.cores) < 1 or max(args.cores) > os.cpu_count():
    p.error(f'--cores={",".join(map(str, args.cores))} must be between 1 and this machine\'s '
            f'{os.cpu_count()}')
  jpegs = make_jpegs(64)
  records = [measure(m, c, jpegs, args.image_size, args.images)
             for c in args.cores for m in args.mode]
  common.emit(records, args.json,
              lambda rs: common.markdown(common.table_rows(rs, COLUMNS)), args.out)


if __name__ == '__main__':
  main()
