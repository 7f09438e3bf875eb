"""How the skipped-update select compiles for an H100 node: a `where` per leaf against a `lax.cond`.

    pip install -r requirements-cuda.txt
    python benchmarks/select_on_gpu.py > benchmarks/results/aot_select.jsonl

Compiles the train step of a narrow Inception-ResNet-v2 (1/1/1 blocks, width 0.25, 8 per
GPU) for `h100:1x1x8` twice: with the reference set's `select_tree` (a `where` per leaf)
and with it replaced by one `lax.cond`, and counts the `conditional` ops that XLA:GPU
keeps (it runs each by copying its predicate to the host), fusions and temporaries.
"""

from __future__ import annotations

import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from jax import lax

jax.config.update('jax_platforms', 'cpu')  # Compile-only devices.

from configs import default
from inception_jax import aot
from inception_jax.ops import reference


def main() -> None:
  config = default.imagenet(default.get_config(), 'inception_resnet_v2')
  config.model.repeats = (1, 1, 1)
  config.model.width_multiplier = 0.25
  config.batch_size = 8 * 8
  devices = aot.target_devices('h100:1x1x8')
  for select in ('where', 'cond'):
    if select == 'cond':  # The A/B: the same set with a cond instead.
      reference.Reference.select_tree = lambda self, p, t, f: lax.cond(p, lambda: t, lambda: f)
    _, (train,) = aot.compile_steps(config, devices, names=['train'])
    record = aot.analyze(train, devices, config.batch_size)
    print(json.dumps({'select': select, 'target': 'h100:1x1x8',
                      'model': 'inception_resnet_v2 1/1/1 width 0.25',
                      'conditionals': len(re.findall(r' conditional\(',
                                                     train.executable.as_text())),
                      'fusions': record['fusions'], 'temp_gb': record['temp_gb']}), flush=True)


if __name__ == '__main__':
  main()
