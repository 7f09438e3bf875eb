"""Inception preprocessing (Szegedy et al. 2016, 2017) as plain functions on tf tensors.

Training: random distorted bounding-box crop (5-100% of the area, aspect ratio
3/4-4/3), bilinear resize, random horizontal flip and optional colour
distortion. Evaluation: central crop of a fraction of each side, bilinear
resize. Both return float32 pixels in [-1, 1].

Every random choice comes from a stateless op keyed by a per-example `seed`
(int tensor of shape [2]), so an augmented example is a pure function of
(image, seed): the input pipeline derives the seed from the example's position
in the stream, which makes resumption exact.

`image` may be encoded bytes (a scalar tf.string: JPEG, PNG, GIF or BMP) or a
decoded uint8 [H, W, 3] tensor. JPEGs are cropped while decoding, which is much
cheaper than decoding the full image first.
"""

from collections.abc import Callable

import tensorflow as tf

# (offset_y, offset_x, height, width) of a crop, as int32 scalar tensors.
Window = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]
WindowFn = Callable[[tf.Tensor], Window]

AREA_RANGE = (0.05, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# As in TF-Slim's inception_preprocessing: at least 10% of the image is kept.
MIN_OBJECT_COVERED = 0.1
MAX_ATTEMPTS = 100


def distorted_crop_window(shape: tf.Tensor, seed: tf.Tensor) -> Window:
  """Samples an Inception crop of an image of `shape` [H, W, C].

  When no window fits in MAX_ATTEMPTS tries (e.g. tiny images) the whole image
  is returned.
  """
  whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_size=shape,
      bounding_boxes=whole_image,
      seed=seed,
      min_object_covered=MIN_OBJECT_COVERED,
      aspect_ratio_range=ASPECT_RATIO_RANGE,
      area_range=AREA_RANGE,
      max_attempts=MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True,
  )
  return begin[0], begin[1], size[0], size[1]


def central_crop_window(shape: tf.Tensor, crop_fraction: float) -> Window:
  """The centred window covering `crop_fraction` of each side (at least 1 px)."""
  def crop(side):
    length = tf.cast(tf.round(crop_fraction * tf.cast(side, tf.float32)), tf.int32)
    length = tf.clip_by_value(length, 1, side)
    return (side - length) // 2, length

  offset_y, height = crop(shape[0])
  offset_x, width = crop(shape[1])
  return offset_y, offset_x, height, width


def decode_and_crop(image: tf.Tensor, window_fn: WindowFn) -> tf.Tensor:
  """Returns the uint8 [h, w, 3] crop `window_fn(shape)` of `image`."""
  if image.dtype != tf.string:
    offset_y, offset_x, height, width = window_fn(tf.shape(image))
    return tf.slice(image, [offset_y, offset_x, 0], [height, width, -1])

  def jpeg():
    window = tf.stack(window_fn(tf.image.extract_jpeg_shape(image)))
    return tf.image.decode_and_crop_jpeg(image, window, channels=3)

  def other_format():
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
    return decode_and_crop(decoded, window_fn)

  cropped = tf.cond(tf.io.is_jpeg(image), jpeg, other_format)
  cropped.set_shape([None, None, 3])
  return cropped


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bilinear resize to [image_size, image_size], float32 in [0, 1]."""
  # No antialiasing, as in the reference preprocessing; the aspect ratio of the
  # crop is not preserved, which is part of the augmentation.
  image = tf.image.resize(image, [image_size, image_size], method='bilinear')
  image.set_shape([image_size, image_size, 3])
  return image / 255.0


def distort_colour(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random brightness, saturation, hue and contrast of a [0, 1] image.

  One fixed order of the four ops (TF-Slim's fast mode) with the same ranges.
  """
  seeds = tf.random.experimental.stateless_split(seed, num=4)
  image = tf.image.stateless_random_brightness(image, 32.0 / 255.0, seeds[0])
  image = tf.image.stateless_random_saturation(image, 0.5, 1.5, seeds[1])
  image = tf.image.stateless_random_hue(image, 0.2, seeds[2])
  image = tf.image.stateless_random_contrast(image, 0.5, 1.5, seeds[3])
  return tf.clip_by_value(image, 0.0, 1.0)


def _to_signed_unit_range(image: tf.Tensor) -> tf.Tensor:
  return image * 2.0 - 1.0


def preprocess_for_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    color_distortion: bool = True,
) -> tf.Tensor:
  """Inception training augmentation; float32 [image_size, image_size, 3] in [-1, 1]."""
  crop_seed, flip_seed, colour_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3)
  )
  image = decode_and_crop(image, lambda shape: distorted_crop_window(shape, crop_seed))
  image = resize(image, image_size)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if color_distortion:
    image = distort_colour(image, colour_seed)
  return _to_signed_unit_range(image)


def preprocess_for_eval(
    image: tf.Tensor, image_size: int, crop_fraction: float = 0.875
) -> tf.Tensor:
  """Central crop and resize; float32 [image_size, image_size, 3] in [-1, 1]."""
  image = decode_and_crop(image, lambda shape: central_crop_window(shape, crop_fraction))
  return _to_signed_unit_range(resize(image, image_size))
