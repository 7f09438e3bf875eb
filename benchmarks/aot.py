"""The real train and eval steps of a config compiled for a TPU slice or a GPU node, no hardware.

    pip install -r requirements-tpu.txt    # libtpu (TPU targets); requirements-cuda.txt for h100
    python benchmarks/aot.py --target=v5e:2x2 --config=configs/inception_resnet_v2_imagenet.py
    python benchmarks/aot.py --target=v5e:2x2,h100:1x1x8 --config=configs/inception_resnet_v2_imagenet.py \
        --config.model.kernels=reference --config.batch_size=256 --json
    python benchmarks/aot.py --target=v5e:2x2 --config=configs/inception_resnet_v2_imagenet.py \
        --max_batch --steps=train --config.model.remat=True   # the largest batch per chip that fits

Per target and step, per device: compile s; argument, output, temporary and total memory
(GB); GFLOP and GB accessed (TPU; XLA:GPU has no cost analysis without a device, so
there only the lowered module's FLOPs); FLOP/byte against the chip's ridge point; a
roofline img/s (`inception_jax/hardware.py`'s peak FLOP/s and bandwidth); every
collective kind with its dtypes, count and MB; fusions and custom calls (the kernels).
`--config.key=value` overrides work as for main.py; `batch_size` is global.
"""

from __future__ import annotations

import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')  # No TPU metadata server on this host.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from absl import app, flags
from ml_collections import config_flags

jax.config.update('jax_platforms', 'cpu')  # Compile-only devices: nothing may touch a GPU.

from benchmarks import common
from inception_jax import aot, cli, validation

flags.DEFINE_list('target', ['v5e:2x2'], f'Where to compile for: {aot.TARGETS_HELP}.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_list('steps', ['train', 'eval'], 'Which steps: train, eval.')
flags.DEFINE_bool('max_batch', False, 'Also find the largest global batch whose train step '
                  'fits in the chip memory (one to three more compiles).')
flags.DEFINE_integer('num_classes', 1000, 'Classifier outputs.')
flags.DEFINE_bool('json', False, 'One JSON object per target and step instead of the table.')
flags.DEFINE_string('out', '', 'Also append the JSON lines to this file.')
flags.DEFINE_string('compilation_cache_dir', '', 'A persistent compilation cache to use '
                    "(the config's own is ignored: compile seconds here are cold by default).")
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS

COLUMNS = (
    ('target', 'target', '{}'), ('kernels', 'kernels', '{}'), ('step', 'step', '{}'),
    ('dtype', 'dtype', '{}'), ('batch/dev', 'per_device_batch', '{:g}'),
    ('compile s', 'compile_s', '{:.1f}'), ('arg GB', 'argument_gb', '{:.2f}'),
    ('temp GB', 'temp_gb', '{:.2f}'), ('total GB', 'hbm_gb', '{:.2f}'),
    ('GFLOP', 'gflop', '{:,.1f}'), ('GB accessed', 'gb_accessed', '{:.1f}'),
    ('FLOP/byte', 'flop_per_byte', '{:.1f}'), ('ridge', 'ridge_flop_per_byte', '{:.0f}'),
    ('roofline img/s', 'roofline_img_s', '{:.0f}'), ('collectives', 'collectives_text', '{}'),
    ('fusions', 'fusions', '{}'), ('custom calls', 'custom_calls', '{}'),
    ('max batch/dev', 'max_batch_per_device', '{}'),
)


def collectives_text(record) -> str:
  """'all-reduce x2: f32 223.4 MB in 180 tensors, u32 ...' for the table."""
  parts = []
  for kind, entry in sorted(record['collectives'].items()):
    carried = ', '.join(f'{dtype} {v["bytes"] / 1e6:.1f} MB in {v["tensors"]} tensors'
                        for dtype, v in sorted(entry['dtypes'].items()))
    parts.append(f'{kind} x{entry["ops"]}: {carried}')
  return '; '.join(parts) or 'none'


def measure(config, target: str) -> list[dict]:
  devices = aot.target_devices(target)
  model, compiled = aot.compile_steps(config, devices, FLAGS.num_classes, FLAGS.steps)
  records = []
  for step in compiled:
    batch = config.batch_size if step.name == 'train' else config.eval_batch_size
    records.append({'target': target, 'kernels': model.kernels, 'model': config.model.name,
                    'dtype': config.model.dtype, 'scan_blocks': config.model.scan_blocks,
                    'remat': config.model.remat, 'bn_group_size': config.model.bn_group_size,
                    'global_batch': batch, **aot.analyze(step, devices, batch)})
  if FLAGS.max_batch:
    train = next((r for r in records if r['step'] == 'train'), None)
    known = {train['per_device_batch']: train['hbm_gb']} if train else {}
    records[0]['max_batch_per_device'] = largest_batch(config, devices, known)
  return records


def largest_batch(config, devices, known: dict[int, float]) -> int:
  """The largest batch per device whose train step fits in the chip's memory.

  Memory grows linearly with the batch: two points give the line (the config's own
  batch, in `known` as {per-device batch: total GB}, when it is 32 or more; else 48),
  a compile checks its prediction, and more step back while it does not fit. The
  global batch stays a multiple of `model.bn_group_size`.
  """
  n, capacity = len(devices), aot.hardware.CHIPS[devices[0].device_kind].hbm_bytes / 1e9
  group = config.model.bn_group_size
  multiple = group // math.gcd(group, n) if group else 1  # Per-device batches allowed.

  def total_gb(per_device: int) -> float:
    if per_device not in known:
      trial = config.copy_and_resolve_references()
      trial.batch_size = per_device * n
      _, (step,) = aot.compile_steps(trial, devices, FLAGS.num_classes, ['train'])
      known[per_device] = aot.analyze(step, devices, trial.batch_size)['hbm_gb']
    return known[per_device]

  low = max(16 // multiple, 1) * multiple
  high = max((b for b in known if b >= 2 * low), default=3 * low)
  at_low, at_high = total_gb(low), total_gb(high)
  slope = (at_high - at_low) / (high - low)
  fits = lambda b: b // multiple * multiple
  guess = max(multiple, fits(math.floor(low + (capacity - at_low) / slope)))
  while guess > multiple and total_gb(guess) > capacity:
    guess = max(multiple, fits(int(guess * 0.95)))
  return guess


def main(argv) -> None:
  del argv
  with cli.one_line_errors():
    config = FLAGS.config
    validation.validate(config)
    if FLAGS.compilation_cache_dir:
      jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache_dir)
    for target in FLAGS.target:
      aot.parse_target(target)  # Every name is checked before the first compile.
    records = [r for target in FLAGS.target for r in measure(config, target)]
  common.emit(records, FLAGS.json, format_table, FLAGS.out)


def format_table(records) -> str:
  return common.markdown(common.table_rows(
      [dict(r, collectives_text=collectives_text(r)) for r in records], COLUMNS))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
