"""Inception preprocessing (Szegedy et al. 2016, 2017) as plain functions on tf tensors.

Training: random distorted bounding-box crop (5-100% of the area, aspect ratio
3/4-4/3), bilinear resize, random horizontal flip. Evaluation: central crop of a
fraction of each side, bilinear resize. Both return uint8 pixels: the devices scale
them to [-1, 1] and apply the colour distortion inside the step (`augment.py`).

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

from inception_jax.data import datasets

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


def decode(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] of encoded bytes or of an already decoded image."""
  if image.dtype != tf.string:
    return image
  decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
  decoded.set_shape([None, None, 3])
  return decoded


def decode_and_crop(image: tf.Tensor, window_fn: WindowFn, dct_method: str = '') -> tf.Tensor:
  """Returns the uint8 [h, w, 3] crop `window_fn(shape)` of `image`.

  `dct_method='INTEGER_FAST'` decodes a JPEG a quarter faster with slightly coarser
  rounding (training's random crops); '' is libjpeg's accurate default (evaluation).
  """
  if image.dtype != tf.string:
    offset_y, offset_x, height, width = window_fn(tf.shape(image))
    return tf.slice(image, [offset_y, offset_x, 0], [height, width, -1])

  def jpeg():
    window = tf.stack(window_fn(tf.image.extract_jpeg_shape(image)))
    return tf.image.decode_and_crop_jpeg(image, window, channels=3, dct_method=dct_method)

  def other_format():
    return decode_and_crop(decode(image), window_fn)

  cropped = tf.cond(tf.io.is_jpeg(image), jpeg, other_format)
  cropped.set_shape([None, None, 3])
  return cropped


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Float pixels in [0, 255] -> uint8, rounded."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bilinear resize to [image_size, image_size], uint8."""
  # No antialiasing, as in the reference preprocessing; the aspect ratio of the
  # crop is not preserved, which is part of the augmentation.
  image = tf.image.resize(image, [image_size, image_size], method='bilinear')
  image.set_shape([image_size, image_size, 3])
  # Bilinear weights sum to one: the values stay in [0, 255], and +0.5 then truncation
  # rounds them (one pass, where round, clip and cast take three).
  return tf.cast(image + 0.5, tf.uint8)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Left-right flip with probability 1/2: one reverse or none (a `where` reads both)."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def preprocess_for_train(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """Inception training crop, flip and resize: uint8 [image_size, image_size, 3].

  The flip comes before the resize, on the (usually smaller) crop: bilinear resizing
  with half-pixel centres commutes with it.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  image = decode_and_crop(image, lambda shape: distorted_crop_window(shape, crop_seed),
                          dct_method='INTEGER_FAST')
  return resize(random_flip(image, flip_seed), image_size)


def preprocess_for_eval(
    image: tf.Tensor, image_size: int, crop_fraction: float = 0.875
) -> tf.Tensor:
  """Central crop and resize: uint8 [image_size, image_size, 3]."""
  image = decode_and_crop(image, lambda shape: central_crop_window(shape, crop_fraction))
  return resize(image, image_size)


# --- Multi-crop evaluation views ------------------------------------------------
# Sizes of the protocols are given for 224 px crops (GoogLeNet, Szegedy et al. 2014
# sec. 7); every length scales by image_size / 224. The view counts: `datasets.CROP_COUNTS`.
TEN_CROP_SCALE = 256
GOOGLENET_SCALES = (256, 288, 320, 352)


def _scaled(length: int, image_size: int) -> int:
  return round(length * image_size / 224)


def resize_shorter_side(image: tf.Tensor, side: int) -> tf.Tensor:
  """Bilinear resize keeping the aspect ratio, shorter side `side`; float32 in [0, 255]."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  size = tf.maximum(side, tf.cast(tf.round(shape * side / tf.reduce_min(shape)), tf.int32))
  return tf.image.resize(image, size, method='bilinear')


def five_crops(image: tf.Tensor, size: int) -> list[tf.Tensor]:
  """Top-left, top-right, bottom-left, bottom-right and centre `size` squares."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  offsets = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size),
             ((height - size) // 2, (width - size) // 2)]
  return [tf.image.crop_to_bounding_box(image, y, x, size, size) for y, x in offsets]


def three_squares(image: tf.Tensor) -> list[tf.Tensor]:
  """Left, centre, right (or top, middle, bottom) squares of side min(H, W)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(height, width)
  extra_y, extra_x = height - side, width - side
  return [tf.image.crop_to_bounding_box(image, extra_y * k // 2, extra_x * k // 2, side, side)
          for k in range(3)]


def _with_mirrors(views: list[tf.Tensor], image_size: int) -> tf.Tensor:
  """[2V, S, S, 3] uint8: the views, then each one flipped left-right."""
  stacked = tf.stack(views)
  stacked.set_shape([len(views), image_size, image_size, 3])
  return to_uint8(tf.concat([stacked, tf.image.flip_left_right(stacked)], axis=0))


def _googlenet_views(image: tf.Tensor, image_size: int, scales: tuple[int, ...],
                     squares: slice) -> list[tf.Tensor]:
  """For each scale and square: its five crops and the whole square resized."""
  views = []
  for scale in scales:
    resized = resize_shorter_side(image, _scaled(scale, image_size))
    for square in three_squares(resized)[squares]:
      views += five_crops(square, image_size)
      views.append(tf.image.resize(square, [image_size, image_size], method='bilinear'))
  return views


def eval_views(image: tf.Tensor, crops: int, image_size: int,
               crop_fraction: float = 0.875) -> tf.Tensor:
  """The `crops` evaluation views of one image: uint8 [crops, S, S, 3].

  1: `preprocess_for_eval`, the central crop of training's evaluation.
  10: shorter side resized to 256 (for S = 224), the four corner and the centre
    S x S crops, and their mirrors.
  12: shorter side 256, the central square: its five crops and the square resized
    to S, and their mirrors (the 256 / central-square part of the 144 views; the
    papers do not spell out their 12 crops).
  144: GoogLeNet's: shorter side 256, 288, 320 and 352; the left, centre and right
    (or top, middle, bottom) squares; five crops and the resized square of each;
    and their mirrors: 4 x 3 x 6 x 2.
  Views are ordered scale, square, crop (corners, centre, whole), then all mirrors.
  """
  datasets.check_crops(crops)
  if crops == 1:
    return preprocess_for_eval(image, image_size, crop_fraction)[None]
  image = decode(image)
  if crops == 10:
    resized = resize_shorter_side(image, _scaled(TEN_CROP_SCALE, image_size))
    return _with_mirrors(five_crops(resized, image_size), image_size)
  if crops == 12:
    views = _googlenet_views(image, image_size, GOOGLENET_SCALES[:1], slice(1, 2))
  else:
    views = _googlenet_views(image, image_size, GOOGLENET_SCALES, slice(None))
  return _with_mirrors(views, image_size)
