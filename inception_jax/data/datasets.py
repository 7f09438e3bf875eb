"""A config's dataset without TensorFlow: its sizes, its holdout, and the pipeline that reads it.

`dataset='synthetic'` is made on the devices (`synthetic.py`) and needs JAX alone. The
offline dataset, TFDS datasets and ImageFolder are read by `input_pipeline.py` with
tf.data and TFDS, imported by `pipeline` only when one of them is chosen.
"""

from __future__ import annotations

import dataclasses
import types

import ml_collections

from inception_jax import extras
from inception_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int


def pipeline(dataset: str) -> types.ModuleType:
  """`input_pipeline`, which reads `dataset`; one line on what to install where TF is missing."""
  with extras.required(f'dataset={dataset!r}', 'tensorflow', 'tensorflow-datasets'):
    from inception_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Number of classes and (global) sizes of the train and eval splits."""
  if config.dataset == synthetic.NAME:
    return DatasetInfo(synthetic.NUM_CLASSES, synthetic.NUM_TRAIN_EXAMPLES,
                       synthetic.NUM_EVAL_EXAMPLES)
  return pipeline(config.dataset).get_dataset_info(config)


def with_holdout(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with a minival carved off the end of its train split, when asked.

  With `holdout_fraction` f > 0, the last f of `train_split` (at least one example) becomes
  the split that training evaluates on, and training reads the rest: sweeps choose on
  data they do not report on. Deterministic, and each host reads its part of both as of
  any split. `eval_split` stays for final numbers (`experiments.evaluate`).
  """
  fraction = config.holdout_fraction
  if not fraction:
    return config
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'holdout_fraction={fraction!r} is invalid: give a fraction in (0, 1), '
                     'or 0 to evaluate on eval_split')
  if '[' in config.train_split:
    raise ValueError(f'holdout_fraction needs an unsliced train_split; got '
                     f'{config.train_split!r}')
  if config.dataset == synthetic.NAME:
    raise ValueError(f'holdout_fraction needs a dataset with splits; {synthetic.NAME!r} has '
                     'none (give 0)')
  total = pipeline(config.dataset).split_size(config, config.train_split)
  held = max(1, round(total * fraction))
  out = config.copy_and_resolve_references()
  out.train_split = f'{config.train_split}[:{total - held}]'
  out.eval_split = f'{config.train_split}[{total - held}:]'
  return out


# --- Multi-crop evaluation (`preprocessing.eval_views`) -----------------------------------
CROP_COUNTS = (1, 10, 12, 144)


def check_crops(crops: int) -> None:
  """Refuses a view count that has no protocol, before a model or the data is read."""
  if crops not in CROP_COUNTS:
    raise ValueError(f'crops={crops!r} is invalid; valid: {", ".join(map(str, CROP_COUNTS))}')
