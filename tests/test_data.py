"""Tests of inception_jax.data: offline dataset, preprocessing, input pipelines."""

import collections
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')  # Tests of the TensorFlow side (requirements.txt).
tfds = pytest.importorskip('tensorflow_datasets')

# pylint: disable=g-import-not-at-top,wrong-import-position
from inception_jax import parallel, train
from inception_jax.data import augment
from inception_jax.data import datasets
from inception_jax.data import input_pipeline
from inception_jax.data import offline
from inception_jax.data import preprocessing
from tests.util import tiny_config

pytestmark = pytest.mark.tf
TINY = 'offline_shapes/tiny'  # 200 train / 50 test examples.
IMAGE_SIZE = 32


def make_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
      dict(
          dataset=TINY,
          data_dir=os.fspath(data_dir),
          manual_dir=None,
          image_folder='',
          train_split='train',
          eval_split='test',
          image_size=IMAGE_SIZE,
          shuffle_buffer_size=1000,
          seed=0,
          eval_crop_fraction=0.875,
          cache=False,
          data_threads=0,
          data_ram_budget_gb=0.0,
          data_file_format='tfrecord',
      )
  )
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  input_pipeline.get_dataset_info(make_config(data_dir))  # Generates it.
  return data_dir


@pytest.fixture(scope='module')
def array_record_dir(tmp_path_factory):
  """The tiny dataset stored as ArrayRecord: read by index."""
  data_dir = tmp_path_factory.mktemp('tfds_array_record')
  input_pipeline.get_dataset_info(make_config(data_dir, data_file_format='array_record'))
  return data_dir


@pytest.fixture(params=['tfrecord', 'array_record'])
def stored(request, tiny_dir, array_record_dir):
  """(data_dir, file_format) of the tiny dataset in each of its two formats."""
  return (tiny_dir, 'tfrecord') if request.param == 'tfrecord' else (array_record_dir,
                                                                       'array_record')


def take(iterator, num):
  return [next(iterator) for _ in range(num)]


def assert_batches_equal(actual, expected):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    assert a.keys() == e.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], e[key], err_msg=key)


def eval_examples(config, **kwargs):
  """(label, image bytes) of the unmasked examples, in order."""
  examples = []
  for batch in input_pipeline.create_eval_iterator(config, **kwargs):
    for image, label, mask in zip(batch['image'], batch['label'], batch['mask']):
      if mask:
        examples.append((int(label), image.tobytes()))
  return examples


def test_offline_builder_is_deterministic(tiny_dir, tmp_path):
  builder = tfds.builder(TINY, data_dir=os.fspath(tiny_dir))
  assert builder.info.splits['train'].num_examples == 200
  assert builder.info.splits['test'].num_examples == 50
  assert builder.info.features['label'].names == list(offline.CLASS_NAMES)
  assert len(offline.CLASS_NAMES) == 10

  input_pipeline.get_dataset_info(make_config(tmp_path))
  other = tfds.builder(TINY, data_dir=os.fspath(tmp_path))
  for split in ('train', 'test'):
    first = list(tfds.as_numpy(builder.as_dataset(split=split)))
    second = list(tfds.as_numpy(other.as_dataset(split=split)))
    assert len(first) == len(second)
    for a, b in zip(first, second):
      assert a['image'].shape == (96, 96, 3) and a['image'].dtype == np.uint8
      np.testing.assert_array_equal(a['image'], b['image'])
      assert a['label'] == b['label']
  labels = collections.Counter(int(ex['label']) for ex in first)
  assert sorted(labels) == list(range(10))


def test_default_offline_config_sizes():
  default = offline.OfflineShapes.BUILDER_CONFIGS[0]
  assert default.name == 'default'
  assert (default.num_train_examples, default.num_test_examples) == (5000, 1000)


def test_dataset_info(tiny_dir):
  info = input_pipeline.get_dataset_info(make_config(tiny_dir))
  assert info == datasets.DatasetInfo(
      num_classes=10, num_train_examples=200, num_eval_examples=50
  )


def train_batches(config, num, **kwargs):
  return take(input_pipeline.create_train_iterator(config, **kwargs), num)


def test_train_batches(tiny_dir):
  kwargs = dict(local_batch_size=8, process_index=0, process_count=1)
  batches = train_batches(make_config(tiny_dir), 3, **kwargs)
  for batch in batches:
    assert batch['image'].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch['image'].dtype == np.uint8  # Scaled to [-1, 1] on the devices.
    assert batch['label'].dtype == np.int32 and batch['label'].shape == (8,)
    np.testing.assert_array_equal(batch['mask'], np.ones(8, np.float32))
  assert not np.array_equal(batches[0]['image'], batches[1]['image'])
  # Caching the decoded examples changes nothing in the stream.
  assert_batches_equal(train_batches(make_config(tiny_dir, cache=True), 3, **kwargs), batches)


@pytest.mark.parametrize('cache', [False, True])
def test_train_resume_is_exact_across_epochs(stored, cache):
  # 200 examples in batches of 16: epoch 0 ends inside batch 12, epoch 1 at the
  # end of batch 24. ArrayRecord: read by index from the position (`cache` unused).
  data_dir, file_format = stored
  if cache and file_format == 'array_record':
    pytest.skip('cache applies to TFRecord splits')
  config = make_config(data_dir, cache=cache, shuffle_buffer_size=64,
                       data_file_format=file_format)

  def stream(start_step, num):
    return train_batches(
        config, num, local_batch_size=16, start_step=start_step,
        process_index=0, process_count=1,
    )

  full = stream(0, 30)
  for start_step in (11, 12, 25):
    assert_batches_equal(stream(start_step, 30 - start_step), full[start_step:])
  # Each epoch holds every example once, in an order of its own.
  labels = np.concatenate([b['label'] for b in full])
  epochs = labels[:200], labels[200:400]
  assert collections.Counter(epochs[0]) == collections.Counter(epochs[1])
  assert not np.array_equal(*epochs)


def test_eval_covers_every_example_once(stored, tiny_dir):
  data_dir, file_format = stored
  config = make_config(data_dir, data_file_format=file_format)
  batches = list(
      input_pipeline.create_eval_iterator(
          config, local_batch_size=16, process_index=0, process_count=1
      )
  )
  assert len(batches) == 4  # 50 examples.
  for batch in batches:
    assert batch['image'].shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
  np.testing.assert_array_equal(
      np.concatenate([b['mask'] for b in batches]), [1.0] * 50 + [0.0] * 14
  )

  builder = tfds.builder(TINY, data_dir=os.fspath(tiny_dir))  # The same examples, as TFRecord.
  expected = [
      (int(ex['label']),
       preprocessing.preprocess_for_eval(ex['image'], IMAGE_SIZE).numpy().tobytes())
      for ex in builder.as_dataset(split='test')
  ]
  assert sorted(eval_examples(config, local_batch_size=16, process_index=0,
                              process_count=1)) == sorted(expected)


def test_processes_read_disjoint_parts(tiny_dir):
  config = make_config(tiny_dir, cache=True)
  parts = [
      eval_examples(config, local_batch_size=8, process_index=i, process_count=2)
      for i in range(2)
  ]
  everything = eval_examples(config, local_batch_size=8, process_index=0, process_count=1)
  assert [len(p) for p in parts] == [25, 25]
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(everything)

  train = [
      train_batches(config, 1, local_batch_size=8, process_index=i, process_count=2)[0]
      for i in range(2)
  ]
  assert not np.array_equal(train[0]['image'], train[1]['image'])


def test_processes_train_on_disjoint_examples_over_an_epoch(stored, tiny_dir, monkeypatch):
  """Two processes' training streams over one epoch: each example of the split exactly
  once, by one process. The random crop is replaced by the central one, so that an
  example is known by its image."""
  monkeypatch.setattr(preprocessing, 'preprocess_for_train',
                      lambda image, seed, size: preprocessing.preprocess_for_eval(image, size))
  data_dir, file_format = stored
  config = make_config(data_dir, data_file_format=file_format)
  seen = []
  for i in range(2):
    stream = input_pipeline.create_train_iterator(config, local_batch_size=4, process_index=i,
                                                  process_count=2)
    seen.append([(int(label), image.tobytes()) for batch in take(stream, 25)  # 100 / 4
                 for label, image in zip(batch['label'], batch['image'])])
  builder = tfds.builder(TINY, data_dir=os.fspath(tiny_dir))
  split = [(int(ex['label']), preprocessing.preprocess_for_eval(ex['image'],
                                                                 IMAGE_SIZE).numpy().tobytes())
           for ex in builder.as_dataset(split='train')]
  assert len(set(split)) == 200  # Every example is told apart by its image.
  assert [len(set(s)) for s in seen] == [100, 100]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(split)


def test_imagenet2012_mock(tmp_path):
  config = make_config(
      tmp_path, dataset='imagenet2012', train_split='train', eval_split='validation'
  )
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    info = input_pipeline.get_dataset_info(config)
    assert info.num_classes == 1000 and info.num_train_examples > 0
    # Four batches of 4 run past the end of the 10-example epoch.
    for batch in train_batches(config, 4, local_batch_size=4, process_index=0,
                               process_count=1):
      assert batch['image'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
      assert batch['label'].shape == (4,)
    batches = list(input_pipeline.create_eval_iterator(
        config, local_batch_size=4, process_index=0, process_count=1
    ))
  assert all(b['image'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) for b in batches)
  assert sum(b['mask'].sum() for b in batches) == info.num_eval_examples


def test_missing_dataset_gives_build_command(tmp_path):
  config = make_config(tmp_path, dataset='imagenet2012', eval_split='validation')
  with pytest.raises(ValueError) as error:
    input_pipeline.get_dataset_info(config)
  message = str(error.value)
  manual_dir = os.path.join(tmp_path, 'downloads', 'manual')
  assert f'tfds build imagenet2012 --data_dir={tmp_path} --manual_dir={manual_dir}' in message
  assert 'ILSVRC2012_img_train.tar' in message

  config = make_config(tmp_path, dataset='cifar10')
  with pytest.raises(ValueError, match='tfds build cifar10 --data_dir='):
    input_pipeline.create_train_iterator(config, local_batch_size=2)


def _write_image_folder(root, num_per_label=5):
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for label in ('cat', 'dog'):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(num_per_label):
        shape = (8, 8, 3) if i % 2 else (7, 40, 3)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        (folder / f'{i}.png').write_bytes(tf.io.encode_png(image).numpy())
  (root / 'test' / 'cat' / 'corrupt.png').write_bytes(b'not an image')


def test_image_folder_skips_corrupt_images(tmp_path):
  _write_image_folder(tmp_path)
  config = make_config(tmp_path, dataset='image_folder', image_folder=os.fspath(tmp_path))
  info = input_pipeline.get_dataset_info(config)
  assert info == datasets.DatasetInfo(2, 10, 11)
  batch, = train_batches(config, 1, local_batch_size=4, process_index=1, process_count=2)
  assert batch['image'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
  parts = [
      eval_examples(config, local_batch_size=4, process_index=i, process_count=2)
      for i in range(2)
  ]
  assert len(parts[0]) + len(parts[1]) == 10  # The corrupt file is skipped.
  assert not set(parts[0]) & set(parts[1])


def test_training_counts_the_corrupt_evaluation_examples(tmp_path):
  _write_image_folder(tmp_path / 'images')
  config = tiny_config(str(tmp_path / 'tfds'), dataset='image_folder',
                       image_folder=os.fspath(tmp_path / 'images'), num_train_steps=1,
                       batch_size=4, eval_batch_size=4, eval_every_steps=1, steps_per_eval=-1)
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    evals = [line for line in map(json.loads, f) if 'eval/skipped_examples' in line]
  assert [line['eval/skipped_examples'] for line in evals] == [1]  # 11 files, 10 images.


@pytest.mark.parametrize('shape', [(8, 8, 3), (7, 40, 3), (1, 1, 3)])
@pytest.mark.parametrize('encoding', ['raw', 'png', 'jpeg'])
def test_preprocessing_survives_small_and_non_square_images(shape, encoding):
  image = tf.constant(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
  if encoding == 'png':
    image = tf.io.encode_png(image)
  elif encoding == 'jpeg':
    image = tf.io.encode_jpeg(image)
  seed = tf.constant([1, 2], tf.int64)

  train = preprocessing.preprocess_for_train(image, seed, 16)
  again = preprocessing.preprocess_for_train(image, seed, 16)
  evaluated = preprocessing.preprocess_for_eval(image, 16)
  for output in (train, evaluated):
    assert output.shape == (16, 16, 3) and output.dtype == tf.uint8
  np.testing.assert_array_equal(train.numpy(), again.numpy())


def test_train_augmentation_depends_on_seed():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8))
  outputs = [
      preprocessing.preprocess_for_train(image, tf.constant([0, i], tf.int64), 24).numpy()
      for i in range(2)
  ]
  assert not np.array_equal(*outputs)


# --- On the devices: scaling and colour distortion (inception_jax/data/augment.py). ---

def test_colour_adjustments_are_tf_images():
  images = np.random.default_rng(0).uniform(0, 1, (3, 9, 7, 3)).astype(np.float32)
  factors = dict(brightness=np.array([0.1, -0.12, 0.0], np.float32),
                 saturation=np.array([0.6, 1.4, 1.0], np.float32),
                 hue=np.array([0.15, -0.2, 0.05], np.float32),
                 contrast=np.array([1.3, 0.55, 1.0], np.float32))
  got = np.asarray(augment.adjust(jnp.asarray(images), **{k: jnp.asarray(v)
                                                         for k, v in factors.items()}))
  for i, image in enumerate(images):
    want = tf.image.adjust_brightness(image, factors['brightness'][i])
    want = tf.image.adjust_saturation(want, factors['saturation'][i])
    want = tf.image.adjust_hue(want, factors['hue'][i])
    want = tf.image.adjust_contrast(want, factors['contrast'][i])
    np.testing.assert_allclose(got[i], tf.clip_by_value(want, 0.0, 1.0), atol=2e-5)


def test_device_augmentation_is_per_image_and_independent_of_the_sharding():
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, 6, 6, 3), dtype=np.uint8))
  key = jax.random.key(3)
  plain = augment.train_images(images, key, False, jnp.float32)
  np.testing.assert_allclose(plain, images.astype(np.float32) / 255 * 2 - 1, atol=1e-6)
  distorted = augment.train_images(images, key, True, jnp.float32)
  assert -1.0 <= float(distorted.min()) and float(distorted.max()) <= 1.0
  assert not np.allclose(distorted, plain, atol=1e-3)
  # The same draws whether the batch is one array or split over the devices.
  sharded = jax.device_put(images, parallel.batch_sharded(parallel.create_mesh()))
  np.testing.assert_allclose(jax.jit(augment.train_images, static_argnums=(2, 3))(
      sharded, key, True, jnp.float32), distorted, atol=1e-6)


def test_holdout_is_the_end_of_the_train_split_and_training_never_reads_it(tiny_data_dir):
  config = tiny_config(tiny_data_dir, holdout_fraction=0.1)
  data = datasets.with_holdout(config)
  assert (data.train_split, data.eval_split) == ('train[:180]', 'train[180:]')
  info = input_pipeline.get_dataset_info(data)
  assert (info.num_train_examples, info.num_eval_examples) == (180, 20)
  digest = lambda image: hash(image.tobytes())
  held = {digest(b['image'][i]) for b in input_pipeline.create_eval_iterator(
      dict_config(data, eval_crop_fraction=1.0), local_batch_size=10, process_index=0,
      process_count=1) for i in range(10)}
  whole = input_pipeline.create_eval_iterator(
      dict_config(config, eval_split='train', eval_crop_fraction=1.0), local_batch_size=20,
      process_index=0, process_count=1)
  train_images = [digest(b['image'][i]) for b in whole for i in range(20)]
  assert held == set(train_images[180:]) and not held & set(train_images[:180])
  with pytest.raises(ValueError, match='holdout_fraction=1.5 is invalid'):
    datasets.with_holdout(tiny_config(tiny_data_dir, holdout_fraction=1.5))


def dict_config(config, **overrides):
  out = config.copy_and_resolve_references()
  out.update(overrides)
  return out
