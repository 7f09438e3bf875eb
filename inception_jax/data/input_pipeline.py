"""Input pipelines: TFDS, ImageFolder or the offline dataset -> host-local numpy batches.

Training is an infinite stream indexed by position. Epoch e is this process's
part of the train split in the order of a shuffle seeded by (seed, process, e);
the augmentation of the element at position p of the stream is seeded by
(seed, process, p). So the stream started at `start_step=k` is, bitwise, the
stream started at 0 without its first k batches, and resuming needs only the
step: whole epochs are skipped by arithmetic, never read. Within an epoch, a
TFRecord split is re-read up to the position (a shuffle buffer's order); a split
stored as ArrayRecord is read by index from there (`random_access.py`).

Nothing is downloaded here. The offline dataset is generated on first use; any
other TFDS dataset must have been built beforehand (`tfds build`).

The way into the data's TensorFlow side: the rest of the code reaches this module through
`datasets.pipeline`, so that TensorFlow is imported only where such a dataset is chosen.

Config keys read (see `DATA_KEYS`): dataset ('offline_shapes', a TFDS name or
'image_folder'), data_dir, manual_dir, image_folder, train_split, eval_split,
image_size, shuffle_buffer_size, seed, eval_crop_fraction, cache (in-memory cache
of the decoded training examples; TFRecord splits), data_threads and
data_ram_budget_gb (tf.data's private thread pool and its autotuner's memory budget),
data_file_format (how the offline dataset is generated: 'tfrecord' or 'array_record';
other datasets are read as they were built).

Batches hold uint8 images; the step scales them and applies the colour distortion on
the devices (`augment.py`).
"""

import difflib
import functools
import math
import os
from collections.abc import Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from inception_jax.data import datasets
from inception_jax.data import offline
from inception_jax.data import preprocessing
from inception_jax.data import random_access
from inception_jax.data import synthetic

OFFLINE_DATASET = offline.OfflineShapes.name
IMAGE_FOLDER = 'image_folder'
_DEFAULT_DATA_DIR = '~/tensorflow_datasets'

DATA_KEYS = (
    'dataset',
    'data_dir',
    'manual_dir',
    'image_folder',
    'train_split',
    'eval_split',
    'image_size',
    'shuffle_buffer_size',
    'seed',
    'eval_crop_fraction',
    'cache',
    'data_threads',
    'data_ram_budget_gb',
    'data_file_format',
)

Batch = dict[str, np.ndarray]
Example = dict[str, tf.Tensor]

try:
  # tf.data runs on the host; it must not take accelerator memory from JAX.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow was initialised before this import.
  logging.warning('Could not hide GPUs from TensorFlow: already initialised.')


def _data_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """The keys of `config` this module reads; a KeyError names a missing one."""
  return ml_collections.FrozenConfigDict({key: config[key] for key in DATA_KEYS})


def _get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the dataset's builder; generates the offline dataset if needed."""
  if config.dataset == IMAGE_FOLDER:
    return tfds.ImageFolder(config.image_folder)
  if config.dataset.split('/')[0] == OFFLINE_DATASET:
    data_dir = os.path.expanduser(config.data_dir or _DEFAULT_DATA_DIR)
    builder = tfds.builder(config.dataset, data_dir=data_dir, file_format=config.data_file_format)
    if not builder.is_prepared():
      logging.info('Generating %s in %s (once).', config.dataset, data_dir)
      try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
      except OSError:
        # Processes that share `data_dir` may all generate it; all but the
        # first fail to move their (identical) copy into place.
        builder = tfds.builder(config.dataset, data_dir=data_dir)
        if not builder.is_prepared():
          raise
    return builder
  try:
    return tfds.builder(config.dataset, data_dir=config.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(config.dataset, tfds.list_builders(), n=3)
    raise ValueError(
        f'unknown dataset {config.dataset!r}; valid: {OFFLINE_DATASET}, {OFFLINE_DATASET}/tiny,'
        f' {IMAGE_FOLDER}, {synthetic.NAME} or a TFDS name (tfds.list_builders())'
        + (f'; did you mean {", ".join(close)}?' if close else '')) from None


def _not_prepared_error(builder: tfds.core.DatasetBuilder, config) -> ValueError:
  data_dir = os.fspath(builder.data_dir_root)
  command = f'tfds build {config.dataset} --data_dir={data_dir}'
  message = (
      f'Dataset {config.dataset!r} is not prepared in {data_dir} and is never'
      ' downloaded at run time. Prepare it first'
  )
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if not instructions:
    message += ' on a machine with network access'
  else:
    manual_dir = config.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
    command += f' --manual_dir={manual_dir}'
    message += (
        f' (a manual download: the files go in {manual_dir};'
        f' {" ".join(instructions.split())})'
    )
  return ValueError(f'{message}:\n  {command}')


def _as_dataset(builder, split, config) -> tf.data.Dataset:
  """Reads `split` in a fixed order with the images still encoded."""
  if random_access.is_random_access(builder):
    return random_access.in_order(_source(builder, split, config))
  try:
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        # `cache` alone decides about caching.
        read_config=tfds.ReadConfig(try_autocache=False),
    )
  except AssertionError as e:  # How TFDS says that no data was found.
    raise _not_prepared_error(builder, config) from e
  return ds.map(lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)})


def _source(builder, split, config):
  try:
    return random_access.source(builder, split)
  except (AssertionError, FileNotFoundError, ValueError) as e:
    raise _not_prepared_error(builder, config) from e


def _num_examples(ds: tf.data.Dataset) -> int:
  num = int(ds.cardinality())
  if num < 0:  # Unknown: count without decoding.
    num = int(ds.reduce(0, lambda count, _: count + 1))
  return num


def _split_size(builder, split: str, config) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    # Split sizes are unknown before preparation (and under tfds.testing.mock_data).
    return _num_examples(_as_dataset(builder, split, config))


def _read_process_split(
    builder, config, split: str, process_index: int, process_count: int, *,
    drop_remainder: bool,
) -> tf.data.Dataset:
  """This process's part of `split`, disjoint from the other processes' parts."""
  if isinstance(builder, tfds.ImageFolder):
    # ImageFolder has no sub-split API: shard the whole split instead.
    ds = _as_dataset(builder, split, config)
    per_process = _num_examples(ds) // process_count
    ds = ds.shard(process_count, process_index)
    return ds.take(per_process) if drop_remainder else ds
  return _as_dataset(builder, _process_split(split, process_index, process_count,
                                             drop_remainder), config)


def _process_split(split: str, process_index: int, process_count: int,
                   drop_remainder: bool):
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count, drop_remainder=drop_remainder)


def _decode(example: Example) -> Example:
  image = tf.io.decode_image(example['image'], channels=3, expand_animations=False)
  return {**example, 'image': image}


def _processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  return process_index, process_count


def _finish(ds: tf.data.Dataset, config) -> Iterator[Batch]:
  options = tf.data.Options()
  options.deterministic = True
  # A pool of its own, so that tf.data's threads do not queue behind other TensorFlow work.
  if config.data_threads:
    options.threading.private_threadpool_size = config.data_threads
  if config.data_ram_budget_gb:
    options.autotune.ram_budget = int(config.data_ram_budget_gb * 2**30)
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split` of `config`'s dataset (`datasets.with_holdout` carves from it)."""
  config = _data_config(config)
  return _split_size(_get_builder(config), split, config)


def get_dataset_info(config: ml_collections.ConfigDict) -> datasets.DatasetInfo:
  """Number of classes and (global) sizes of the train and eval splits (`datasets`'s)."""
  config = _data_config(config)
  builder = _get_builder(config)
  return datasets.DatasetInfo(
      num_classes=builder.info.features['label'].num_classes,
      num_train_examples=_split_size(builder, config.train_split, config),
      num_eval_examples=_split_size(builder, config.eval_split, config),
  )


def create_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    local_batch_size: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
  """Infinite stream of augmented training batches, starting at `start_step`.

  Batches are {'image': uint8 [B, S, S, 3], 'label': int32 [B], 'mask': float32 [B]
  of ones}. Batches run across epoch boundaries.
  """
  config = _data_config(config)
  process_index, process_count = _processes(process_index, process_count)
  builder = _get_builder(config)
  root = tf.constant([config.seed, process_index], tf.int64)
  shuffle_key, augment_key = tf.unstack(tf.random.experimental.stateless_split(root, 2))
  start = start_step * local_batch_size  # The stream's position of the first example.
  if random_access.is_random_access(builder):
    records = _source(builder, _process_split(config.train_split, process_index, process_count,
                                              True), config)
    _check_part(len(records), process_index, process_count, config)
    ds = random_access.shuffled_stream(records, config.seed, process_index, start)
  else:
    ds = _buffered_stream(builder, config, process_index, process_count, shuffle_key, start)

  def augment(position: tf.Tensor, example: Example) -> Example:
    seed = tf.random.experimental.stateless_fold_in(augment_key, position)
    image = preprocessing.preprocess_for_train(example['image'], seed, config.image_size)
    return {'image': image, 'label': example['label'], 'mask': tf.ones([])}

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=True)  # Skip corrupt images.
  return _finish(ds.batch(local_batch_size, drop_remainder=True), config)


def _check_part(size: int, process_index: int, process_count: int, config) -> None:
  if not size:
    raise ValueError(f'Process {process_index} of {process_count} has no examples of'
                     f' {config.dataset!r} split {config.train_split!r}.')


def _buffered_stream(builder, config, process_index: int, process_count: int,
                     shuffle_key: tf.Tensor, start: int) -> tf.data.Dataset:
  """(position, example) from `start` on: each epoch a seeded shuffle buffer's order."""
  examples = _read_process_split(
      builder, config, config.train_split, process_index, process_count,
      drop_remainder=True,  # Same epoch length on every process.
  )
  epoch_size = _num_examples(examples)
  _check_part(epoch_size, process_index, process_count, config)
  if config.cache:
    examples = examples.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)
    examples = examples.ignore_errors(log_warning=True).cache()

  def epoch(index: tf.Tensor) -> tf.data.Dataset:
    shuffle_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(shuffle_key, index),
        minval=None, maxval=None, dtype=tf.int64,
    )
    order = examples.shuffle(
        config.shuffle_buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False
    )
    positions = tf.data.Dataset.range(index * epoch_size, (index + 1) * epoch_size)
    return tf.data.Dataset.zip(positions, order)

  first_epoch, offset = divmod(start, epoch_size)
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  return ds.skip(offset)  # Re-reads the epoch up to the position: a shuffle buffer's order.


def create_eval_iterator(
    config: ml_collections.ConfigDict,
    *,
    local_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
  """One pass over this process's part of the eval split, central crops.

  Every process yields the same number of full-size batches; padding examples
  have `mask` 0, real ones 1. `cache` does not apply: each call reads the split.
  """
  config = _data_config(config)
  preprocess = functools.partial(preprocessing.preprocess_for_eval,
                                 image_size=config.image_size,
                                 crop_fraction=config.eval_crop_fraction)
  return _eval_iterator(config, preprocess, local_batch_size, process_index, process_count)


def create_multicrop_eval_iterator(
    config: ml_collections.ConfigDict,
    *,
    crops: int,
    local_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
  """Like `create_eval_iterator`, with the `crops` views of each example.

  Batches are {'image': uint8 [B, crops, S, S, 3], 'label', 'mask'}; the views
  are `preprocessing.eval_views` (crops=1 is `create_eval_iterator`'s central crop).
  """
  config = _data_config(config)
  datasets.check_crops(crops)  # Before any data is read.
  preprocess = functools.partial(preprocessing.eval_views, crops=crops,
                                 image_size=config.image_size,
                                 crop_fraction=config.eval_crop_fraction)
  return _eval_iterator(config, preprocess, local_batch_size, process_index, process_count)


def _eval_iterator(config, preprocess, local_batch_size, process_index,
                   process_count) -> Iterator[Batch]:
  """Batches of `preprocess(image)` over this process's part of the eval split, padded."""
  process_index, process_count = _processes(process_index, process_count)
  builder = _get_builder(config)
  examples = _read_process_split(
      builder, config, config.eval_split, process_index, process_count,
      drop_remainder=False,
  )
  # The largest process part decides the number of batches of every process.
  largest_part = math.ceil(_split_size(builder, config.eval_split, config) / process_count)
  num_batches = math.ceil(max(largest_part, _num_examples(examples)) / local_batch_size)

  def apply(example: Example) -> Example:
    return {'image': preprocess(example['image']), 'label': example['label'],
            'mask': tf.ones([])}

  ds = examples.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=True)  # Skip corrupt images.
  ds = ds.batch(local_batch_size)
  ds = ds.map(functools.partial(_pad_batch, batch_size=local_batch_size))
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(num_batches)
  return _finish(ds, config)


def _pad_batch(batch: Example, batch_size: int) -> Example:
  """Pads a (last, partial) batch with zeros, which includes a zero mask."""
  missing = batch_size - tf.shape(batch['label'])[0]

  def pad(x):
    padded = tf.pad(x, [[0, missing]] + [[0, 0]] * (x.shape.rank - 1))
    padded.set_shape([batch_size, *x.shape[1:]])
    return padded

  return tf.nest.map_structure(pad, batch)
