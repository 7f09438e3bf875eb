"""Lower-resolution input at near-constant cost (Inception-v3 paper sec. 9, Table 2).

Three Inception-v3 runs that differ only in input size and in the first layers'
strides, with the same parameters and almost the same FLOPs per image:
  299 x 299 receptive field: stride 2 and max pooling after the first layers;
  151 x 151: stride 1 and max pooling;
   79 x  79: stride 1 and no pooling (36x36 grid instead of 35x35, ~7% fewer FLOPs).

    python -m experiments.sweep --config=configs/sweeps/low_resolution.py --workdir=runs/lowres

One run of the three (any config takes the same overrides):

    python main.py --config=configs/sweeps/low_resolution.py --workdir=runs/lowres_79 \
        --config.image_size=79 --config.model.stem_stride=1 --config.model.stem_pool=False

On ImageNet as in the paper, the same overrides apply to configs/inception_v3_imagenet.py.
"""

import ml_collections

from configs import default

# (image size, first conv stride, first max pool) of the paper's three networks.
SETTINGS = ((299, 2, True), (151, 1, True), (79, 1, False))


def get_config() -> ml_collections.ConfigDict:
  """A narrow Inception-v3 on the offline dataset at 299 px, the sweep's base."""
  config = default.get_config()
  config.model.name = 'inception_v3'
  config.model.width_multiplier = 0.25
  config.model.repeats = ()  # Inception-v3's blocks are fixed.
  config.image_size = 299
  return config


def sweep() -> list[dict[str, object]]:
  return [{'image_size': size, 'model.stem_stride': stride, 'model.stem_pool': pool}
          for size, stride, pool in SETTINGS]
