"""The four networks, each assembled from a stage table (widths and repeats are data).

`Inception` reads the table of its `arch` and `variant` and applies every option
(width, residual on/off and scale, repeats, scanning, remat, dtype) in one place.
Stage names are the parameter-tree names: repeated stages get `_<i>` suffixes
when unrolled, or one stacked copy when scanned (see `scan_blocks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import ops
from inception_jax.models import blocks as B
from inception_jax.models.layers import ConvBN, LayerOptions, conv

ARCHS = ('inception_v3', 'inception_v4', 'inception_resnet_v1', 'inception_resnet_v2')
VARIANTS = ('paper', 'slim')
# Every stem halves the image four times with VALID convs/pools, and both reductions
# follow: below 75 px the 8x8 grid would be empty.
MIN_IMAGE_SIZE = 75
# TF-Slim's scales for the 35x35, 17x17 and 8x8 residual blocks (paper sec. 3.3: 0.1-0.3).
SLIM_RESIDUAL_SCALES = (0.17, 0.10, 0.20)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One row of a network table: a block, its figure's widths, how often it repeats."""
  name: str
  block: type[nn.Module]
  fields: tuple[tuple[str, Any], ...] = ()
  repeat: int | None = None  # index into `repeats` (A, B, C) for a repeated stage
  grid: int | None = None    # index into the residual scales for a residual stage
  count: int = 1             # fixed repeat count when `repeat` is None
  held_apart: int = 0        # of the `repeats` count, the blocks that a later stage holds


def _stage(name, block, repeat=None, grid=None, held_apart=0, **fields) -> Stage:
  return Stage(name, block, tuple(sorted(fields.items())), repeat, grid, held_apart=held_apart)


def _inception_v3(variant: str) -> list[Stage]:
  # v3 repeats differently-sized blocks, so its stages are fixed, one per slim scope.
  del variant  # The released network is the reference for both layouts.
  v3_b = lambda c7: dict(b0=192, b1=(c7, c7, 192), b2=(c7,) * 4 + (192,), b2_first=(7, 1),
                         pool=192)
  return [
      _stage('Stem', B.StemV3),
      _stage('Mixed_5b', B.InceptionV3A, pool=32),
      _stage('Mixed_5c', B.InceptionV3A, pool=64),
      _stage('Mixed_5d', B.InceptionV3A, pool=64),
      _stage('Mixed_6a', B.ReductionA, k=64, l=96, m=96, n=384),
      _stage('Mixed_6b', B.InceptionB, **v3_b(128)),
      _stage('Mixed_6c', B.InceptionB, **v3_b(160)),
      _stage('Mixed_6d', B.InceptionB, **v3_b(160)),
      _stage('Mixed_6e', B.InceptionB, **v3_b(192)),
      _stage('Mixed_7a', B.ReductionB, b0=(192, 320), b1=(192, 192, 192, 192)),
      _stage('Mixed_7b', B.InceptionV3C),
      _stage('Mixed_7c', B.InceptionV3C),
  ]


def _inception_v4(variant: str) -> list[Stage]:
  # TF-Slim turns some factorized kernels the other way round from Figs. 5 and 6.
  slim = variant == 'slim'
  return [
      _stage('Stem', B.StemV4),
      _stage('InceptionA', B.InceptionA, repeat=0),
      _stage('ReductionA', B.ReductionA, k=192, l=224, m=256, n=384),
      _stage('InceptionB', B.InceptionB, repeat=1, b2_first=(7, 1) if slim else (1, 7)),
      _stage('ReductionB', B.ReductionB),
      _stage('InceptionC', B.InceptionC, repeat=2,
             b2_kernels=((3, 1), (1, 3)) if slim else ((1, 3), (3, 1))),
  ]


def _inception_resnet_v1(variant: str) -> list[Stage]:
  del variant  # No released checkpoint exists; both layouts follow Figs. 10-15.
  return [
      _stage('Stem', B.StemResNetV1),
      _stage('InceptionResNetA', B.InceptionResNetA, repeat=0, grid=0, b2=(32, 32, 32)),
      _stage('ReductionA', B.ReductionA, k=192, l=192, m=256, n=384),
      _stage('InceptionResNetB', B.InceptionResNetB, repeat=1, grid=1, b0=128,
             b1=(128, 128, 128)),
      _stage('ReductionB', B.InceptionResNetReductionB, b1=(256, 256), b2=(256, 256, 256)),
      _stage('InceptionResNetC', B.InceptionResNetC, repeat=2, grid=2, b1=(192, 192, 192)),
  ]


def _inception_resnet_v2(variant: str) -> list[Stage]:
  if variant == 'paper':
    stem = [_stage('Stem', B.StemV4)]
  else:
    stem = [_stage('Stem', B.StemV3), _stage('Mixed_5b', B.InceptionV3A, b0=96, pool=64)]
  stages = stem + [
      _stage('InceptionResNetA', B.InceptionResNetA, repeat=0, grid=0),
      _stage('ReductionA', B.ReductionA, k=256, l=256, m=384, n=384),
      _stage('InceptionResNetB', B.InceptionResNetB, repeat=1, grid=1),
      _stage('ReductionB', B.InceptionResNetReductionB),
  ]
  if variant == 'paper':
    return stages + [_stage('InceptionResNetC', B.InceptionResNetC, repeat=2, grid=2)]
  # Slim's 10 block8 count its last one, linear with scale 1 (its own stage here),
  # followed by a 1x1 conv to 1536.
  return stages + [
      _stage('InceptionResNetC', B.InceptionResNetC, repeat=2, grid=2, held_apart=1),
      _stage('Block8', B.InceptionResNetC, scale=1.0, activation=False),
      _stage('Conv2d_7b_1x1', ConvBN, spec=conv(1536))]


LAYOUTS = {'inception_v3': _inception_v3, 'inception_v4': _inception_v4,
           'inception_resnet_v1': _inception_resnet_v1,
           'inception_resnet_v2': _inception_resnet_v2}
DEFAULT_REPEATS = {
    ('inception_v4', 'paper'): (4, 7, 3), ('inception_v4', 'slim'): (4, 7, 3),
    ('inception_resnet_v1', 'paper'): (5, 10, 5), ('inception_resnet_v1', 'slim'): (5, 10, 5),
    ('inception_resnet_v2', 'paper'): (5, 10, 5), ('inception_resnet_v2', 'slim'): (10, 20, 10),
}
STEM_STRIDES = (1, 2)


def stem_has_pool_switch(arch: str, variant: str) -> bool:
  """Whether the stem's first max pool can be removed (`stem_pool=False`)."""
  return issubclass(LAYOUTS[arch](variant)[0].block, B.Stem)


AUX_AFTER = {'inception_v3': 'Mixed_6e'}  # Others: after their 17x17 (B) stage.


class _Cell(nn.Module):
  """Wraps a block as a (carry, _) -> (carry, None) cell for `nn.scan`; `train` is static."""
  block: type[nn.Module]
  fields: tuple[tuple[str, Any], ...]
  train: bool

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
    return _apply_block(self.block(**dict(self.fields), name='block'), x, self.train), None


def _apply_block(block: nn.Module, x: jax.Array, train: bool) -> jax.Array:
  y = block(x, train)
  if isinstance(block, B.ResidualBlock):
    # Where the kernel set may keep a residual block's output in a buffer of its own.
    y = block.opts.kernels.block_output(y)
  return y


class Inception(nn.Module):
  """Inception-v3, Inception-v4 or Inception-ResNet-v1/v2 (paper Figs. 9 and 15).

  Returns logits, and `(logits, aux_logits)` in training when `aux_logits` is set.
  The pre-pool feature map is sown as `intermediates/pre_pool` and each residual
  block's monitor as `.../branch_rms`, `shortcut_rms`, `dead_channels`. `kernels` names the
  kernel set that computes it (`inception_jax.ops`; `create_model` resolves 'auto').
  """
  arch: str
  variant: str = 'slim'
  num_classes: int = 1000
  width_multiplier: float = 1.0
  residual_scale: float | tuple[float, float, float] = SLIM_RESIDUAL_SCALES
  use_residual: bool = True
  repeats: tuple[int, int, int] | None = None
  bn_scale: bool = False
  bn_momentum: float = 0.9997
  bn_epsilon: float = 1e-3
  bn_group_size: int = 0
  aux_logits: bool = False
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32
  scan_blocks: bool = False
  remat: bool = False
  kernels: str = 'reference'
  cpu_conv_library: str = 'eigen'
  platform: str = 'cpu'  # Where the steps are compiled for: which compiler options apply.
  stem_stride: int = 2
  stem_pool: bool = True
  avg_pool_include_pad: bool = False

  @property
  def kernel_set(self) -> ops.Reference:
    return ops.get(self.kernels, self.cpu_conv_library)

  @property
  def compiler_options(self) -> dict[str, Any] | None:
    """The XLA options every jit of this network's steps is given (`jax.jit(compiler_options=)`)."""
    return self.kernel_set.compiler_options(self.scan_blocks, self.platform)

  @property
  def layer_options(self) -> LayerOptions:
    """The options every layer of this network is built with."""
    return LayerOptions(self.width_multiplier, self.bn_scale, self.bn_momentum, self.bn_epsilon,
                        self.bn_group_size, jnp.dtype(self.dtype), self.kernel_set,
                        self.avg_pool_include_pad)

  def stages(self) -> list[Stage]:
    """The table of this network with the options applied (repeats, scales, residual)."""
    repeats = self.repeats or DEFAULT_REPEATS.get((self.arch, self.variant))
    scales = self.residual_scale
    if isinstance(scales, (int, float)):
      scales = (float(scales),) * 3
    out = []
    for stage in LAYOUTS[self.arch](self.variant):
      fields = dict(stage.fields)
      if stage.name == 'Stem':
        fields['stride'] = self.stem_stride
        if not self.stem_pool:
          fields['pool'] = False
      if stage.grid is not None:
        fields.setdefault('scale', scales[stage.grid])
        fields['use_residual'] = self.use_residual
      elif issubclass(stage.block, B.ResidualBlock):  # slim's final linear block8
        fields['use_residual'] = self.use_residual
      count = stage.count if stage.repeat is None else repeats[stage.repeat] - stage.held_apart
      fields['opts'] = self.layer_options
      out.append(dataclasses.replace(stage, fields=tuple(sorted(fields.items())), count=count))
    return out

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if min(x.shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(f'image size {x.shape[1]}x{x.shape[2]} is below the minimum of '
                       f'{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} for {self.arch}')
    x = x.astype(self.dtype)
    aux = None
    aux_after = AUX_AFTER.get(self.arch, 'InceptionResNetB' if 'resnet' in self.arch
                              else 'InceptionB')
    for stage in self.stages():
      x = self._apply_stage(stage, x, train)
      if self.aux_logits and stage.name == aux_after:
        aux = B.AuxHead(self.num_classes, self.layer_options, name='AuxLogits')(x, train)
    self.sow('intermediates', 'pre_pool', x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # The classifier in float32 whatever the compute dtype: a small matmul, and its kernel
    # gradient is then summed over the batch and all-reduced in float32, not bf16.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, name='Logits')(x)
    if aux is not None and train:
      return logits, aux
    return logits

  def _apply_stage(self, stage: Stage, x: jax.Array, train: bool) -> jax.Array:
    fields = dict(stage.fields)
    if stage.repeat is None:  # A single block, as named in the table.
      return _apply_block(self._maybe_remat(stage.block)(**fields, name=stage.name), x, train)
    if not self.scan_blocks:
      for i in range(stage.count):
        x = _apply_block(self._maybe_remat(stage.block)(**fields, name=f'{stage.name}_{i}'), x,
                         train)
      return x
    if stage.count == 0:
      return x
    policy = self.kernel_set.scan_policy
    if self.remat:  # Everything but the carry is recomputed.
      cell = nn.remat(_Cell, prevent_cse=False)
    elif policy is not None:  # What the block keeps for the backward pass: the set's choice.
      cell = nn.remat(_Cell, prevent_cse=False, policy=policy)
    else:
      cell = _Cell
    scanned = nn.scan(cell, variable_axes={True: 0}, split_rngs={True: True},
                      length=stage.count)
    x, _ = scanned(stage.block, stage.fields, train, name=stage.name)(x, None)
    return x

  def _maybe_remat(self, block: type[nn.Module]) -> type[nn.Module]:
    # `train` (argument 2, counting self) must stay a Python bool under remat.
    return nn.remat(block, static_argnums=(2,)) if self.remat else block


def stack_repeats(params: Any, model: Inception) -> Any:
  """Unrolled-block parameters (`Name_<i>/...`) -> the scanned layout (`Name/block/...`).

  Works on any variable collection (params, batch_stats); the leading axis of
  each scanned leaf is the block index.
  """
  params = dict(params)
  for stage in model.stages():
    if stage.repeat is None or stage.count == 0:
      continue
    copies = [params.pop(f'{stage.name}_{i}') for i in range(stage.count)]
    params[stage.name] = {'block': jax.tree.map(lambda *xs: jnp.stack(xs), *copies)}
  return params


def unstack_repeats(params: Any, model: Inception) -> Any:
  """The inverse of `stack_repeats`."""
  params = dict(params)
  for stage in model.stages():
    if stage.repeat is None or stage.count == 0:
      continue
    stacked = params.pop(stage.name)['block']
    for i in range(stage.count):
      params[f'{stage.name}_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params


def check_repeats(repeats: Sequence[int] | None, arch: str, variant: str) -> None:
  """Raises a ValueError for a `repeats` this network cannot take."""
  if repeats is None:
    return
  if arch == 'inception_v3':
    raise ValueError('repeats cannot be set for inception_v3: its blocks differ from one '
                     'another (Mixed_5b-7c); it applies to inception_v4 and the '
                     'inception_resnet networks')
  minimum = max(stage.held_apart for stage in LAYOUTS[arch](variant))
  if len(repeats) != 3 or any(int(r) != r or r < minimum for r in repeats):
    raise ValueError(f'repeats={tuple(repeats)} is invalid for {arch} ({variant}): give '
                     f'three integers >= {minimum}, the number of A, B and C blocks')
