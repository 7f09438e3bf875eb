"""`offline_shapes`: a procedurally generated image dataset that needs no network.

Ten classes of shapes and textures drawn with seeded numpy on random backgrounds,
with random colours, positions, sizes, rotations and pixel noise, so that a
classifier has something to learn without the task being trivial. Every example
is a pure function of (split, index), hence two builds are bitwise identical.

Usage (importing this module registers the builder with TFDS):

  from inception_jax.data import offline  # noqa: F401
  builder = tfds.builder('offline_shapes', data_dir=data_dir)
  builder.download_and_prepare()
  ds = builder.as_dataset(split='train')
"""

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 96
CLASS_NAMES = (
    'disc',
    'square',
    'triangle',
    'cross',
    'ring',
    'horizontal_stripes',
    'vertical_stripes',
    'checkerboard',
    'diagonal_stripes',
    'dots',
)
_SPLIT_SEEDS = {'train': 0, 'test': 1}
# (y, x) coordinates of the pixel centres, float32 to keep rendering cheap.
_PIXEL_CENTRES = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5

# A mask function maps pixel coordinates relative to the object centre, already
# rotated by the object's angle (u, v), the object's radius and the example's
# rng to a boolean foreground mask.
MaskFn = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]


def _disc(u, v, r, rng):
  del rng
  return np.hypot(u, v) <= r


def _square(u, v, r, rng):
  del rng
  half = 0.8 * r  # About the area of the disc.
  return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(u, v, r, rng):
  del rng
  # Intersection of three half-planes whose normals are 120 degrees apart.
  inside = np.ones(u.shape, dtype=bool)
  for k in range(3):
    angle = 2 * math.pi * k / 3
    inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.5 * r
  return inside


def _cross(u, v, r, rng):
  width = r * rng.uniform(0.2, 0.35)
  bar_u = (np.abs(u) <= r) & (np.abs(v) <= width)
  bar_v = (np.abs(v) <= r) & (np.abs(u) <= width)
  return bar_u | bar_v


def _ring(u, v, r, rng):
  d = np.hypot(u, v)
  return (d <= r) & (d >= r * rng.uniform(0.45, 0.7))


def _stripes(coordinate, rng):
  period = rng.uniform(6, 16)
  phase = rng.uniform(0, 2 * math.pi)
  return np.sin(coordinate * (2 * math.pi / period) + phase) > 0


def _horizontal_stripes(u, v, r, rng):
  del u, r
  return _stripes(v, rng)


def _vertical_stripes(u, v, r, rng):
  del v, r
  return _stripes(u, rng)


def _diagonal_stripes(u, v, r, rng):
  del r
  sign = 1.0 if rng.uniform() < 0.5 else -1.0  # Both diagonals are the class.
  return _stripes((u + sign * v) / math.sqrt(2), rng)


def _checkerboard(u, v, r, rng):
  del r
  period = rng.uniform(5, 14)
  cells = np.floor((u + rng.uniform(0, period)) / period) + np.floor(
      (v + rng.uniform(0, period)) / period
  )
  return cells % 2 == 1


def _dots(u, v, r, rng):
  del r
  period = rng.uniform(7, 16)
  du = (u + rng.uniform(0, period)) % period - period / 2
  dv = (v + rng.uniform(0, period)) % period - period / 2
  return np.hypot(du, dv) <= period * rng.uniform(0.2, 0.35)


_SHAPES: tuple[MaskFn, ...] = (_disc, _square, _triangle, _cross, _ring)
_TEXTURES: tuple[MaskFn, ...] = (
    _horizontal_stripes,
    _vertical_stripes,
    _checkerboard,
    _diagonal_stripes,
    _dots,
)
_MASK_FNS = _SHAPES + _TEXTURES


def _random_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Returns (background, foreground) RGB colours that are far enough apart."""
  background = rng.uniform(0, 255, size=3).astype(np.float32)
  while True:
    foreground = rng.uniform(0, 255, size=3).astype(np.float32)
    if np.linalg.norm(foreground - background) > 100:
      return background, foreground


def render_example(label: int, rng: np.random.Generator) -> np.ndarray:
  """Draws one uint8 [IMAGE_SIZE, IMAGE_SIZE, 3] image of class `label`."""
  # Scalars are Python floats throughout so that numpy keeps float32 arrays.
  size = IMAGE_SIZE
  y, x = _PIXEL_CENTRES
  background, foreground = _random_colours(rng)

  is_shape = label < len(_SHAPES)
  radius = rng.uniform(0.15, 0.35) * size if is_shape else 0.0
  margin = radius if is_shape else 0.25 * size
  cy, cx = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
  # Shapes rotate freely; textures only a little, so that horizontal and
  # vertical stripes stay distinct classes.
  max_angle = math.pi if is_shape else math.radians(10)
  angle = rng.uniform(-max_angle, max_angle)
  cos, sin = math.cos(angle), math.sin(angle)
  u = (x - cx) * cos + (y - cy) * sin
  v = (y - cy) * cos - (x - cx) * sin

  mask = _MASK_FNS[label](u, v, radius, rng)
  if not is_shape:
    # Textures fill a random axis-aligned rectangle, so that the class is
    # carried by the pattern rather than by the outline.
    half_h, half_w = rng.uniform(0.2, 0.45) * size, rng.uniform(0.2, 0.45) * size
    mask &= (np.abs(y - cy) <= half_h) & (np.abs(x - cx) <= half_w)
  mask = mask[..., None]

  # Background with a linear brightness gradient, then Gaussian pixel noise.
  direction = rng.uniform(0, 2 * math.pi)
  ramp = ((x - size / 2) * math.cos(direction) + (y - size / 2) * math.sin(direction))
  ramp *= rng.uniform(0, 40) / size
  image = np.where(mask, foreground, background + ramp[..., None])
  image += rng.uniform(0, 20) * rng.standard_normal(image.shape, dtype=np.float32)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def generate_examples(
    split: str, num_examples: int
) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
  """Yields (key, example) pairs; classes are balanced by cycling labels."""
  for index in range(num_examples):
    rng = np.random.default_rng([_SPLIT_SEEDS[split], index])
    label = index % len(CLASS_NAMES)
    yield index, {'image': render_example(label, rng), 'label': label}


@dataclasses.dataclass
class OfflineShapesConfig(tfds.core.BuilderConfig):
  num_train_examples: int = 5000
  num_test_examples: int = 1000


class OfflineShapes(tfds.core.GeneratorBasedBuilder):
  """Procedurally generated shapes and textures, 10 classes, 96x96 RGB."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      OfflineShapesConfig(name='default', description='5,000 train / 1,000 test.'),
      # For unit tests: same images as the first examples of `default`.
      OfflineShapesConfig(
          name='tiny',
          description='200 train / 50 test, for tests.',
          num_train_examples=200,
          num_test_examples=50,
      ),
      # For benchmarks/resume.py: an epoch long enough that resuming mid-epoch shows its cost.
      OfflineShapesConfig(name='100k', description='100,000 train / 1,000 test.',
                          num_train_examples=100_000),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def _checksums_path(cls):
    # Nothing is downloaded, so there are no checksums. Returning None also
    # skips TFDS's `code_path` lookup, which for a builder inside a package
    # imports `importlib_resources` (not installed with our pinned stack).
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Procedurally generated shapes and textures (10 classes), no"
            " download needed."
        ),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='png'
            ),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        'train': self._generate_examples('train', config.num_train_examples),
        'test': self._generate_examples('test', config.num_test_examples),
    }

  def _generate_examples(self, split: str, num_examples: int):
    return generate_examples(split, num_examples)
