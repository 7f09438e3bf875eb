"""Tests of the metric writers: TensorBoard event files without TensorFlow, and metrics.jsonl."""

import glob
import os

from tensorboard.backend.event_processing import event_accumulator

from inception_jax import metrics


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """What TensorBoard's own reader finds in `logdir`: {tag: [(step, value)]}."""
  events = event_accumulator.EventAccumulator(logdir)
  events.Reload()
  return {tag: [(s.step, s.value) for s in events.Scalars(tag)]
          for tag in events.Tags()['scalars']}


def test_tensorboard_writer_without_tensorflow_is_read_back_by_tensorboard(tmp_path):
  writer = metrics.TensorBoardWriter(str(tmp_path))
  writer.write_hparams({'model.name': 'inception_v4', 'batch_size': 32, 'ema': True})
  writer.write_scalars(10, {'train/loss': 2.5, 'train/top1_error': 0.75})
  writer.write_scalars(20, {'train/loss': 1.25})
  writer.close()
  assert read_scalars(str(tmp_path)) == {'train/loss': [(10, 2.5), (20, 1.25)],
                                         'train/top1_error': [(10, 0.75)]}
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  assert events.SummaryMetadata('_hparams_/session_start_info').plugin_data.plugin_name == (
      'hparams')


def test_writer_without_tensorflow_writes_tensorboard_and_jsonl(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics.extras, 'available', lambda module: module != 'tensorflow')
  writer = metrics.create_writer(str(tmp_path))
  writer.write_hparams({'learning_rate': 0.045})
  writer.write_scalars(5, {'eval/loss': 0.5})
  writer.close()
  assert len(glob.glob(os.path.join(tmp_path, 'events.out.tfevents.*'))) == 1
  assert read_scalars(str(tmp_path)) == {'eval/loss': [(5, 0.5)]}
  assert metrics.read_metrics(str(tmp_path)) == [{'step': 5, 'eval/loss': 0.5}]
