"""Time to the first training batch of a run resumed mid-epoch, by how the split is stored.

    python benchmarks/resume.py                  # 100k examples, resumed at 90% of the epoch
    python benchmarks/resume.py --json --out=benchmarks/results/resume.jsonl

Generates the offline dataset's '100k' config (100,000 train images, 96x96 PNG) once per
format in `--data_dir`, then builds the training stream at step 0 and at the step
`--fraction` into the epoch, and times each stream's first batch. A TFRecord split is
read front to back, so its stream re-reads the epoch up to the position; an ArrayRecord
split is read by index from there (`inception_jax/data/random_access.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common

FORMATS = ('tfrecord', 'array_record')
DATASET = 'offline_shapes/100k'
COLUMNS = (('format', 'file_format', '{}'), ('examples', 'examples', '{}'),
           ('resumed at', 'position', '{}'), ('first batch s', 'first_batch_s', '{:.2f}'),
           ('from step 0 s', 'first_batch_from_start_s', '{:.2f}'),
           ('generated in s', 'generate_s', '{:.0f}'))


def first_batch_seconds(config, start_step: int, batch: int) -> float:
  from inception_jax.data import input_pipeline
  start = time.perf_counter()
  next(input_pipeline.create_train_iterator(config, local_batch_size=batch, start_step=start_step,
                                            process_index=0, process_count=1))
  return time.perf_counter() - start


def measure(file_format: str, args: argparse.Namespace) -> dict:
  from configs import default
  from inception_jax.data import input_pipeline
  config = default.get_config()
  config.dataset, config.data_file_format, config.cache = args.dataset, file_format, False
  config.data_dir = os.path.join(args.data_dir, file_format)
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS reports its generation on stdout.
    examples = input_pipeline.get_dataset_info(config).num_train_examples  # Generated once.
  generate_s = time.perf_counter() - start
  step = int(args.fraction * examples) // args.batch
  return {'file_format': file_format, 'examples': examples, 'batch': args.batch,
          'fraction': args.fraction, 'position': step * args.batch,
          'first_batch_s': first_batch_seconds(config, step, args.batch),
          'first_batch_from_start_s': first_batch_seconds(config, 0, args.batch),
          'generate_s': generate_s}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--format', type=common.list_of(str, FORMATS), default=list(FORMATS))
  p.add_argument('--dataset', default=DATASET, help='an offline_shapes config')
  p.add_argument('--data_dir', default=os.path.join('/tmp', 'inception_jax_resume'),
                 help='where the datasets are generated (about 1.5 GB per format)')
  p.add_argument('--fraction', type=float, default=0.9, help='where in the epoch to resume')
  p.add_argument('--batch', type=int, default=256, help='per-host batch')
  p.add_argument('--json', action='store_true', help='one JSON object per format')
  p.add_argument('--out', default='', help='also append the JSON lines to this file')
  args = p.parse_args(argv)
  if not 0.0 <= args.fraction < 1.0:
    p.error(f'--fraction={args.fraction} must be in [0, 1)')
  if args.dataset.split('/')[0] != 'offline_shapes':
    p.error(f'--dataset={args.dataset!r} is invalid; give offline_shapes/<config> (it is '
            'generated in each format)')
  if args.batch < 1:
    p.error(f'--batch={args.batch} must be positive')
  records = [measure(f, args) for f in args.format]
  common.emit(records, args.json,
              lambda rs: common.markdown(common.table_rows(rs, COLUMNS)), args.out)


if __name__ == '__main__':
  main()
