"""`dataset='synthetic'`: batches made on the devices, to tell input-bound from compute-bound.

One batch of random uint8 images and labels is generated on the devices, already
sharded as training's, and handed to every step: no host work, no transfer. A run on
it trains on noise; its steps/s is the devices' speed alone.
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections

NAME = 'synthetic'
NUM_CLASSES = 1000
NUM_TRAIN_EXAMPLES = 1_281_167  # ImageNet's, so that epochs and schedules read as there.
NUM_EVAL_EXAMPLES = 50_000


def batches(config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding,
            batch_size: int) -> Iterator[dict[str, jax.Array]]:
  """The same global batch of `batch_size`, made on the devices, forever."""
  size = config.image_size

  @functools.partial(jax.jit, out_shardings=sharding)
  def make(key):
    images, labels = jax.random.split(key)
    return {'image': jax.random.randint(images, (batch_size, size, size, 3), 0, 256,
                                        jnp.int32).astype(jnp.uint8),
            'label': jax.random.randint(labels, (batch_size,), 0, NUM_CLASSES, jnp.int32),
            'mask': jnp.ones((batch_size,), jnp.float32)}

  return itertools.repeat(make(jax.random.key(config.seed)))
