"""Per-stage output shape, parameters and FLOPs of a network, as a table.

    python -m inception_jax.models.summary inception_resnet_v2 --variant=slim
    python -m inception_jax.models.summary inception_v3 --image_size=79 --stem_stride=1 \
        --no_stem_pool

FLOPs are XLA's cost analysis of each stage's forward pass for one image
(a multiply-add counts as two), taken from the lowered HLO, so nothing
full-size is compiled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models import MIN_IMAGE_SIZE, create_model
from inception_jax.models.networks import Inception


@dataclasses.dataclass(frozen=True)
class StageStats:
  name: str
  count: int
  output_shape: tuple[int, ...]
  params: int
  flops: float  # per image, all copies of the stage


def _stats(module, x: jax.ShapeDtypeStruct) -> tuple[jax.ShapeDtypeStruct, int, float]:
  """Output shape, parameter count and forward FLOPs of `module` on `x` (one image)."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
  apply = lambda v, y: module.apply(v, y)
  out = jax.eval_shape(apply, variables, x)
  params = sum(math.prod(p.shape) for p in jax.tree.leaves(variables.get('params', {})))
  cost = jax.jit(apply).lower(variables, x).cost_analysis() or {}
  return out, params, float(cost.get('flops', 0.0))


def stage_stats(model: Inception, image_size: int = 299) -> list[StageStats]:
  """One row per stage of `model`'s table, then the classifier."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.dtype(model.dtype))
  rows = []
  for stage in model.stages():
    block = stage.block(**dict(stage.fields))
    params = flops = 0
    if stage.count:  # Copies share shapes: one analysis serves them all.
      x, params, flops = _stats(block, x)
    rows.append(StageStats(stage.name, stage.count, tuple(x.shape[1:]),
                           params * stage.count, flops * stage.count))
  _, params, flops = _stats(_Head(model.num_classes), x)
  rows.append(StageStats('Logits', 1, (model.num_classes,), params, flops))
  return rows


class _Head(nn.Module):
  """Global average pool + linear classifier, as `Inception.__call__` ends."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def format_table(rows: Sequence[StageStats]) -> str:
  lines = [f'{"stage":<20} {"x":>3} {"output":>16} {"params":>12} {"GFLOPs":>8}',
           '-' * 63]
  for r in rows:
    lines.append(f'{r.name:<20} {r.count:>3} {"x".join(map(str, r.output_shape)):>16} '
                 f'{r.params:>12,} {r.flops / 1e9:>8.3f}')
  lines.append('-' * 63)
  lines.append(f'{"total":<20} {"":>3} {"":>16} {sum(r.params for r in rows):>12,} '
               f'{sum(r.flops for r in rows) / 1e9:>8.3f}')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('model')
  parser.add_argument('--variant', default='slim')
  parser.add_argument('--image_size', type=int, default=299)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--bn_scale', action='store_true')
  parser.add_argument('--stem_stride', type=int, default=2, help='1 or 2 (v3 paper sec. 9)')
  parser.add_argument('--no_stem_pool', action='store_true',
                      help="remove the stem's first max pool (v3 paper sec. 9)")
  args = parser.parse_args(argv)
  try:
    model = create_model(args.model, num_classes=args.num_classes, variant=args.variant,
                         width_multiplier=args.width_multiplier, bn_scale=args.bn_scale,
                         stem_stride=args.stem_stride, stem_pool=not args.no_stem_pool)
    if args.image_size < MIN_IMAGE_SIZE:
      raise ValueError(f'--image_size={args.image_size} is below the minimum of '
                       f'{MIN_IMAGE_SIZE}')
  except ValueError as e:
    parser.error(str(e))
  print(f'{args.model} ({args.variant}), {args.image_size}x{args.image_size}, per image')
  print(format_table(stage_stats(model, args.image_size)))


if __name__ == '__main__':
  main()
