"""Single-crop, multi-crop and ensemble evaluation of runs and converted weights.

    python -m experiments.evaluate --workdir=runs/default --crops=10 --ema
    python -m experiments.evaluate --workdirs=runs/ir2_a,runs/ir2_b,runs/v4 --crops=144 \
        --split=validation --json=ensemble.json
    python -m experiments.evaluate --weights=weights/inception_v4 --dataset=imagenet2012 \
        --split=validation --data_dir=/data/tfds

Crops (SPEC.md, "Evaluation protocols"; see `preprocessing.eval_views`): 1 is the
central crop of training's evaluation, 10 the corners, centre and mirrors, 12 and
144 GoogLeNet's protocol. Each model sees the views at its own image size; the
softmax is averaged over the views of an image, then over the models of an
ensemble (any mix of architectures). Top-1 / top-5 error of the ensemble and of
each model are printed (and written as JSON with --json).

The data (dataset, data_dir, split) is the first run's, else configs/default.py's,
and the flags override it. A run is evaluated at its newest checkpoint, with its
EMA weights under --ema. Converted weights (`--weights=DIR`) are `DIR/model.json`
(`{"model": {create_model options with "name"}, "num_classes": head size,
"label_offset": 1 for a 1001-class head with background, optional "image_size"}`)
and `DIR/variables/` (see `checkpointing.save_variables`); --ema does not apply to
them (released checkpoints hold averaged weights already).

The examples are split over every device of every process, as training's batches are
(start the same command on every host; `--distributed` as main.py's
`config.distributed`): each process reads its part of the split, keeps the softmax
of its own examples, and the processes add up their counts of examples and of top-1
and top-5 mistakes, so the errors are exactly those of one process reading it all.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Iterable, Sequence

from inception_jax import hugepages

if __name__ == '__main__':  # Before jax and TensorFlow load: the process is replaced.
  hugepages.reexec_with_huge_pages()  # XLA:CPU's per-step buffers (inception_jax/hugepages.py).

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections
import numpy as np
from absl import app, flags
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from configs import default
from experiments import runs
from inception_jax import checkpointing, cli, convert, parallel, steps
from inception_jax import metrics as metrics_lib
from inception_jax.data import augment, datasets
from inception_jax.models import Inception

CONVERTED_IMAGE_SIZE = 299  # Every released Inception checkpoint.


@dataclasses.dataclass(frozen=True)
class Member:
  """One model of an ensemble, with what its views and its outputs need."""
  name: str
  model: Inception
  variables: dict[str, Any]  # params and batch_stats
  image_size: int
  crop_fraction: float = 0.875
  label_offset: int = 0  # Dataset class i is logit i + label_offset.


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config had."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_tuples(runs.read_config(workdir)))


def _replicated_template(init_fn, mesh) -> Any:
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init_fn))


def load_run(workdir: str, num_classes: int, mesh, *, ema: bool = False) -> Member:
  """The newest checkpoint of a run (raw or EMA weights), without its optimizer state."""
  config = load_config(workdir)
  directory = os.path.join(workdir, runs.CHECKPOINTS)
  step = None
  if os.path.isdir(directory):
    checkpoints = checkpointing.RunCheckpoints(directory, every_steps=1)
    step = checkpoints.latest_step()
  if step is None:
    raise ValueError(f'{workdir} holds no checkpoint (looked in {directory})')
  model = steps.create_model_from_config(config, num_classes)
  template = _replicated_template(lambda: steps.initial_variables(model, config), mesh)
  template = {'params': template['params'], 'batch_stats': template.get('batch_stats', {}),
              'ema_params': template['params']}
  restored = checkpoints.restore_subset(template, step)
  variables = {'params': restored['ema_params' if ema else 'params'],
               'batch_stats': restored['batch_stats']}
  return Member(f'{workdir}@{step}{" (EMA)" if ema else ""}', model, variables,
                config.image_size, config.eval_crop_fraction)


def load_weights(directory: str, mesh) -> Member:
  """Converted weights (`python -m inception_jax.convert`): DIR/model.json, DIR/variables/."""
  model, variables, meta = convert.load_converted(directory, parallel.replicated(mesh))
  return Member(directory, model, variables,
                meta.get('image_size', CONVERTED_IMAGE_SIZE),
                label_offset=meta.get('label_offset', 0))


def data_config(base: ml_collections.ConfigDict | None = None, *, dataset: str = '',
                data_dir: str = '', split: str = '',
                num_examples: int = 0) -> ml_collections.ConfigDict:
  """The data keys of `base` (default: configs/default.py) with the given overrides.

  `num_examples` > 0 keeps the first that many examples of the split.
  """
  config = (base or default.get_config()).copy_and_resolve_references()
  if dataset:
    config.dataset = dataset
  if data_dir:
    config.data_dir = data_dir
  if split:
    config.eval_split = split
  if num_examples:
    if num_examples < 0 or '[' in config.eval_split:
      raise ValueError(f'num_examples={num_examples} is invalid with split '
                       f'{config.eval_split!r}: give a count > 0 and an unsliced split')
    config.eval_split = f'{config.eval_split}[:{num_examples}]'
  return config


def predict(member: Member, config: ml_collections.ConfigDict, num_classes: int, mesh, *,
            crops: int = 1, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Softmax averaged over the views of each example: ([N, num_classes], labels [N]).

  At most `batch_size` views (rounded up to a multiple of the devices) go through
  the network at a time, whatever `crops` is.
  """
  datasets.check_crops(crops)
  _check_head(member, num_classes)
  # Views per forward pass of this process: a multiple of its devices, as is the global
  # chunk of every process together.
  local_devices = mesh.devices.size // jax.process_count()
  local_views = -(-batch_size // mesh.devices.size) * local_devices
  config = config.copy_and_resolve_references()
  config.image_size, config.eval_crop_fraction = member.image_size, member.crop_fraction
  batches = datasets.pipeline(config.dataset).create_multicrop_eval_iterator(
      config, crops=crops, local_batch_size=max(1, local_views // crops))

  apply = _probabilities_fn(member.model, member.label_offset, num_classes, mesh)
  all_probs, all_labels = [], []
  for batch in batches:
    views = batch['image'].reshape((-1,) + batch['image'].shape[2:])
    chunks = [multihost_utils.global_array_to_host_local_array(
        apply(member.variables, parallel.to_global({'image': chunk}, mesh)['image']),
        mesh, P('data')) for chunk in _padded_chunks(views, local_views)]
    probs = np.concatenate([np.asarray(c) for c in chunks])[:len(views)]
    probs = probs.reshape(len(batch['label']), crops, -1)
    keep = batch['mask'] > 0
    all_probs.append(probs.mean(axis=1)[keep])
    all_labels.append(batch['label'][keep])
  return np.concatenate(all_probs), np.concatenate(all_labels)


@functools.lru_cache(maxsize=None)
def _probabilities_fn(model: Inception, label_offset: int, num_classes: int, mesh):
  """Jitted (variables, views) -> softmax over the dataset's classes; one per model."""
  def probabilities(variables, images):
    images = augment.to_signed_unit_range(images, model.dtype)
    logits = model.apply(variables, images, train=False)
    return jax.nn.softmax(logits[:, label_offset:label_offset + num_classes])

  return jax.jit(probabilities, in_shardings=(parallel.replicated(mesh),
                                              parallel.batch_sharded(mesh)),
                 out_shardings=parallel.batch_sharded(mesh),
                 compiler_options=model.compiler_options)


def _check_head(member: Member, num_classes: int) -> None:
  classes = member.model.num_classes - member.label_offset
  if classes != num_classes:
    raise ValueError(f'{member.name} predicts {classes} classes (head of '
                     f'{member.model.num_classes}, label offset {member.label_offset}); the '
                     f'dataset has {num_classes}')


def _padded_chunks(views: np.ndarray, size: int) -> Iterable[np.ndarray]:
  """Chunks of exactly `size` views (one compiled shape), the last padded with zeros."""
  for start in range(0, len(views), size):
    chunk = views[start:start + size]
    if len(chunk) < size:
      chunk = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                              chunk.dtype)])
    yield chunk


def errors(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Top-1 and top-5 error over this process's examples and every other process's.

  Counts, not means, are added up across the processes: the errors are exact.
  """
  per_example = metrics_lib.classification_metrics(probs, labels)
  counts = np.array([len(labels)] + [int(np.sum(per_example[k]))
                                     for k in ('top1_error', 'top5_error')], np.int32)
  if jax.process_count() > 1:
    counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, 3).sum(axis=0)
  total, top1, top5 = (int(c) for c in counts)
  return {'num_examples': total, 'top1_error': top1 / max(total, 1),
          'top5_error': top5 / max(total, 1)}


def evaluate(members: Sequence[Member], config: ml_collections.ConfigDict, mesh, *,
             crops: int = 1, batch_size: int = 64) -> dict[str, Any]:
  """Top-1/top-5 error of each member and of their softmax average on `config`'s eval split."""
  if not members:
    raise ValueError('nothing to evaluate: give --workdirs and/or --weights')
  num_classes = datasets.get_dataset_info(config).num_classes
  results, ensemble, labels = [], None, None
  for member in members:
    start = time.perf_counter()
    probs, member_labels = predict(member, config, num_classes, mesh, crops=crops,
                                   batch_size=batch_size)
    seconds = time.perf_counter() - start
    if labels is not None and not np.array_equal(labels, member_labels):
      raise ValueError(f'{member.name} read other examples than {members[0].name}')
    labels = member_labels
    ensemble = probs if ensemble is None else ensemble + probs
    member_errors = errors(probs, labels)
    results.append({'name': member.name, 'image_size': member.image_size, **member_errors,
                    'images_per_sec': member_errors['num_examples'] / seconds})
  return {'dataset': config.dataset, 'split': config.eval_split, 'crops': crops,
          **errors(ensemble / len(members), labels), 'models': results}


def format_results(results: dict[str, Any]) -> str:
  lines = [f'{results["dataset"]} {results["split"]}: {results["num_examples"]} examples, '
           f'{results["crops"]} crop(s)']
  rows = [(m['name'], m) for m in results['models']]
  if len(rows) > 1:
    rows.append((f'ensemble of {len(rows)} (softmax average)', results))
  width = max(len(name) for name, _ in rows)
  for name, r in rows:
    lines.append(f'  {name:<{width}}  top-1 error {100 * r["top1_error"]:6.2f}%  '
                 f'top-5 error {100 * r["top5_error"]:6.2f}%')
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_list('workdirs', [], 'Run directories (several: an ensemble).')
  flags.DEFINE_alias('workdir', 'workdirs')
  flags.DEFINE_list('weights', [], 'Directories of converted weights (ensemble members too).')
  flags.DEFINE_integer('crops', 1, 'Views per image: 1, 10, 12 or 144.')
  flags.DEFINE_bool('ema', False, "Use the runs' EMA weights.")
  flags.DEFINE_string('dataset', '', "TFDS name (default: the first run's).")
  flags.DEFINE_string('data_dir', '', "TFDS data dir (default: the first run's).")
  flags.DEFINE_string('split', '', "Split, e.g. validation (default: the first run's "
                      'eval_split).')
  flags.DEFINE_integer('num_examples', 0, 'Only the first N examples of the split (0: all).')
  flags.DEFINE_integer('batch_size', 64, 'Views per forward pass (bounds the memory).')
  flags.DEFINE_string('json', '', 'Also write the results to this JSON file.')
  flags.DEFINE_string('distributed', 'auto', 'jax.distributed.initialize: auto, true or '
                      "false (as main.py's config.distributed).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  try:
    parallel.maybe_initialize_distributed(args.distributed)
    if not args.workdirs and not args.weights:
      raise ValueError('nothing to evaluate: give --workdir(s) and/or --weights')
    datasets.check_crops(args.crops)
    config = data_config(load_config(args.workdirs[0]) if args.workdirs else None,
                         dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                         num_examples=args.num_examples)
    num_classes = datasets.get_dataset_info(config).num_classes
    mesh = parallel.create_mesh()
    members = [load_run(w, num_classes, mesh, ema=args.ema) for w in args.workdirs]
    members += [load_weights(w, mesh) for w in args.weights]
    results = evaluate(members, config, mesh, crops=args.crops, batch_size=args.batch_size)
    if jax.process_index() > 0:  # Every process holds the same results; one reports.
      return
    print(format_results(results))
    if args.json:
      with open(args.json, 'w') as f:
        json.dump(results, f, indent=2)
  except cli.USER_ERRORS as e:  # Bad flags, runs or data (CheckpointError too): one line.
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  _define_flags()
  app.run(main)
