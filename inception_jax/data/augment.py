"""The part of Inception preprocessing that runs on the accelerator, inside the jitted step.

The host decodes, crops, resizes and flips, and hands uint8 images to the devices (a
quarter of float32's bytes); the step scales them to [-1, 1] and, in training when asked,
applies the colour distortion: random brightness, saturation, hue and contrast in one
fixed order with TF-Slim's ranges (its fast mode), per image, elementwise work that an
accelerator does in microseconds and a host core in milliseconds. Each image's draw comes
from (seed, step, its index in the global batch), so a resumed run augments exactly as
an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BRIGHTNESS = 32.0 / 255.0
SATURATION = (0.5, 1.5)
HUE = 0.2
CONTRAST = (0.5, 1.5)


def to_signed_unit_range(images: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """uint8 [0, 255] (or float [0, 1]) images -> `dtype` in [-1, 1]."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  return (images * 2.0 - 1.0).astype(dtype)


def rgb_to_hsv(r: jax.Array, g: jax.Array, b: jax.Array) -> tuple[jax.Array, ...]:
  """RGB channels in [0, 1] -> (hue in [0, 1), saturation, value).

  Channels are separate arrays, so that nothing reduces or updates a last axis of 3:
  XLA:TPU lays such an axis out in tiles of 128 and emits its reductions and
  updates slowly (benchmarks/README.md, "Compile time").
  """
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  hue = jnp.where(value == r, (g - b) / safe,
                  jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  hue = jnp.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
  return hue, saturation, value


def hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  sector = sector.astype(jnp.int32) % 6
  choose = lambda *options: jnp.select([sector == i for i in range(5)], options[:5], options[5])
  return choose(v, q, p, p, t, v), choose(t, v, v, q, p, p), choose(p, p, t, v, v, q)


def adjust(images: jax.Array, brightness: jax.Array, saturation: jax.Array, hue: jax.Array,
           contrast: jax.Array) -> jax.Array:
  """`tf.image`'s adjust_brightness, _saturation, _hue and _contrast in turn, per image.

  `images` [B, H, W, 3] in [0, 1]; each factor has shape [B]. The result is clipped to
  [0, 1] once, at the end, as TF-Slim's `distort_color`.
  """
  per_image = lambda v: v[:, None, None]
  rgb = [images[..., i] + per_image(brightness) for i in range(3)]
  h, s, v = rgb_to_hsv(*rgb)
  s = jnp.clip(s * per_image(saturation), 0.0, 1.0)
  h = (h + per_image(hue)) % 1.0
  rgb = hsv_to_rgb(h, s, v)
  # Contrast about each image's mean of each channel, as tf.image's.
  mean = [jnp.mean(c, axis=(1, 2), keepdims=True) for c in rgb]
  return jnp.clip(jnp.stack([(c - m) * per_image(contrast) + m for c, m in zip(rgb, mean)],
                            axis=-1), 0.0, 1.0)


def distort_colour(images: jax.Array, key: jax.Array) -> jax.Array:
  """Random colour distortion of [B, H, W, 3] images in [0, 1], one draw per image."""
  b, s, h, c = jax.random.split(key, 4)
  shape = images.shape[:1]
  uniform = lambda k, lo, hi: jax.random.uniform(k, shape, jnp.float32, lo, hi)
  return adjust(images, uniform(b, -BRIGHTNESS, BRIGHTNESS), uniform(s, *SATURATION),
                uniform(h, -HUE, HUE), uniform(c, *CONTRAST))


def train_images(images: jax.Array, key: jax.Array, color_distortion: bool,
                 dtype: jnp.dtype) -> jax.Array:
  """A training batch as the network takes it: [-1, 1] in `dtype`."""
  if not color_distortion:
    return to_signed_unit_range(images, dtype)
  unit = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
  return to_signed_unit_range(distort_colour(unit, key), dtype)
