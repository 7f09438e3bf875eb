"""Metric collections (clu) and writers: TensorBoard, the log, and `metrics.jsonl`.

`metrics.jsonl` in the workdir is what experiments read back: one JSON object per
write, `{"step": N, "train/loss": ..., ...}`. TensorBoard's event files go beside it,
written by clu's tf.summary writer, or by `TensorBoardWriter` where TensorFlow is missing.
"""


import collections
import json
import os
import re
import time
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, metrics
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import event_file_writer

from inception_jax import extras

METRICS_FILE = 'metrics.jsonl'


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Per-example top-1/top-5 error of `logits` against integer `labels`.

  An example is right in the top k when fewer than k classes score above its label:
  elementwise and per example, so a sharded batch needs no gather (a `top_k` sorts
  each row, and XLA gathers the rows first). A tie with the label counts in its favour.
  """
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  above = jnp.sum(logits > true, axis=-1)
  return {'top1_error': (above >= 1).astype(jnp.float32),
          'top5_error': (above >= min(5, logits.shape[-1])).astype(jnp.float32)}


@flax.struct.dataclass
class StageStats(metrics.Metric):
  """Mean over steps of each residual stage's monitor: `{stat: {stage: value}}` (empty if none)."""
  totals: dict[str, dict[str, jax.Array]]
  count: jax.Array

  @classmethod
  def from_model_output(cls, stage_stats: dict[str, dict[str, jax.Array]], **_) -> 'StageStats':
    return cls(totals=stage_stats, count=jnp.ones((), jnp.int32))

  def merge(self, other: 'StageStats') -> 'StageStats':
    return type(self)(jax.tree.map(jnp.add, self.totals, other.totals), self.count + other.count)

  def compute(self) -> dict[str, dict[str, jax.Array]]:
    return jax.tree.map(lambda total: total / self.count, self.totals)


@jax.jit
def merged(collected: metrics.Collection, new: metrics.Collection) -> metrics.Collection:
  """`collected.merge(new)` in one program: clu merges field by field, a dispatch each (about
  20 a train step), which crowd the runtime's queue (`accumulate` says why that matters)."""
  return collected.merge(new)


def accumulate(collected: metrics.Collection | None,
               new: metrics.Collection) -> metrics.Collection:
  """`new` merged into `collected` once the steps before it are done.

  The train and eval loops merge each step's metrics right after dispatching it, so waiting
  here keeps dispatch one step ahead of the devices at most. Unbounded, executions queue up,
  and XLA:CPU with several devices (the tests' 4) deadlocks in an all-reduce once about a
  hundred are queued: the process aborts after 40 s (jax 0.10.2).
  """
  if collected is None:
    return new
  jax.block_until_ready(collected)
  return merged(collected, new)


STAGE_STATS = ('shortcut_rms', 'branch_rms', 'dead_channels')  # Sown by `ResidualBlock`.


def stage_stats(intermediates: Mapping[str, Any]) -> dict[str, dict[str, jax.Array]]:
  """Per statistic and stage, the mean over the stage's blocks (paper sec. 3.3).

  Repeated blocks (`InceptionResNetA_0`, `_1`, ... or one scanned stack) form one stage.
  """
  per_stage = collections.defaultdict(lambda: collections.defaultdict(list))
  for path, values in flax.traverse_util.flatten_dict(intermediates).items():
    if path[-1] in STAGE_STATS:
      per_stage[path[-1]][re.sub(r'_\d+$', '', path[0])] += [jnp.ravel(v) for v in values]
  return {stat: {stage: jnp.mean(jnp.concatenate(v)) for stage, v in stages.items()}
          for stat, stages in per_stage.items()}


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  top1_error: metrics.Average.from_output('top1_error')
  top5_error: metrics.Average.from_output('top5_error')
  grad_norm: metrics.Average.from_output('grad_norm')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  pre_pool_zero_fraction: metrics.Average.from_output('pre_pool_zero_fraction')
  dead_unit_fraction: metrics.LastValue.from_output('dead_unit_fraction')
  skipped_steps: metrics.LastValue.from_output('skipped_steps')
  clipped_fraction: metrics.Average.from_output('clipped')
  stage: StageStats  # Written as train/<stat>/<stage>.


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  top1_error: metrics.Average.from_output('top1_error')
  top5_error: metrics.Average.from_output('top5_error')
  ema_loss: metrics.Average.from_output('ema_loss')
  ema_top1_error: metrics.Average.from_output('ema_top1_error')
  ema_top5_error: metrics.Average.from_output('ema_top5_error')


def with_accuracy(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
  """Prefixes names and adds top-k accuracy beside each top-k error; flattens dicts."""
  out = {}
  for name, value in values.items():
    if isinstance(value, Mapping):  # e.g. stage/branch_rms/<stage>
      out.update(with_accuracy(value, f'{prefix}/{name}'))
      continue
    value = float(np.asarray(value))
    out[f'{prefix}/{name}'] = value
    if name.endswith('_error') and 'top' in name:
      out[f'{prefix}/{name[:-len("_error")]}_accuracy'] = 1.0 - value
  return out


# A log interval in which the network counts as dead (paper sec. 3.3: "the last layer
# before the average pooling started to produce only zeros"). Not exactly all: a few
# units that fire on rare images leave the classifier as blind as none, and a window
# mean of exactly 1.0 missed every collapse of the first sec. 3.3 sweep (0.96-0.999).
DEAD_ZERO_FRACTION = 0.99  # Of the pre-pool activations, averaged over the interval.
DEAD_UNIT_FRACTION = 0.95  # Of the pre-pool channels, zero for every image of a batch.


def network_dead(scalars: Mapping[str, float]) -> bool:
  """Whether the train scalars of one log say the pre-pool layer is dead."""
  return (scalars['train/pre_pool_zero_fraction'] >= DEAD_ZERO_FRACTION
          and scalars['train/dead_unit_fraction'] >= DEAD_UNIT_FRACTION)


def train_scalars(values: Mapping[str, Any], step: int) -> dict[str, float]:
  """The train scalars to write at `step`, with `train/network_dead` (paper sec. 3.3).

  As ReLUs pass no gradient at zero, a dead pre-pool layer does not recover by itself.
  """
  values = dict(values)
  stages = values.pop('stage', {})
  scalars = with_accuracy({**values, **stages}, 'train')  # train/branch_rms/<stage>, ...
  dead = network_dead(scalars)
  scalars['train/network_dead'] = float(dead)
  if dead:
    logging.warning('NETWORK DEAD at step %d: %.1f%% of the pre-pool activations and %.0f%% '
                    'of its channels are zero (paper sec. 3.3); lower the residual scale or '
                    'the learning rate.', step, 100 * scalars['train/pre_pool_zero_fraction'],
                    100 * scalars['train/dead_unit_fraction'])
  return scalars


class _ScalarWriter(metric_writers.MetricWriter):
  """A writer of scalars: training writes no other kind (images, histograms, ...)."""

  def write_summaries(self, step, values, metadata=None):  # pylint: disable=unused-argument
    pass

  write_images = write_videos = write_texts = write_histograms = write_summaries

  def write_audios(self, step, audios, *, sample_rate):  # pylint: disable=unused-argument
    pass

  def write_hparams(self, hparams):  # pylint: disable=unused-argument
    pass

  def flush(self) -> None:
    pass

  close = flush


class JsonlWriter(_ScalarWriter):
  """Appends scalars to `<workdir>/metrics.jsonl`, one line per write."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, METRICS_FILE)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')


class TensorBoardWriter(_ScalarWriter):
  """Scalars and hparams to TensorBoard event files in `logdir`, without TensorFlow.

  The tensorboard package's own event writer and protos: scalars as `simple_value`
  (tf.summary's v1 form, which TensorBoard reads as v2's), hparams as its hparams plugin's
  session summary, as clu's tf.summary writer writes them.
  """

  def __init__(self, logdir: str):
    self._events = event_file_writer.EventFileWriter(logdir)

  def _write(self, step: int, summary: summary_pb2.Summary) -> None:
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write(int(step), summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(np.asarray(v)))
        for k, v in scalars.items()]))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._write(0, hparams_summary.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + logging + metrics.jsonl on process 0, logging only elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  if extras.available('tensorflow'):
    default = metric_writers.create_default_writer(workdir)  # tf.summary, asynchronous.
  else:
    default = metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(),
                                               TensorBoardWriter(workdir)])
  return metric_writers.MultiWriter([default, JsonlWriter(workdir)])


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of a run's metrics.jsonl (empty if it has none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
