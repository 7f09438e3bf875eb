"""Every block of Inception-v3, Inception-v4 and Inception-ResNet-v1/v2.

Each block is a table of branches (see `layers.py`); its fields are the filter
counts of its figure and default to the paper's numbers, so a network that uses
a block with other widths (Inception-ResNet-v1, Inception-v3) passes them in.
Branch order follows TF-Slim (pools last), which fixes the channel order of the
concatenation and so the checkpoint layout.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from inception_jax import ops
from inception_jax.models.layers import (AVG_POOL, IDENTITY_POOL, MAX_POOL_REDUCE, Conv2D,
                                         ConvBN, Fork, LayerOptions, Layers, Pool, alternating,
                                         concat_branches, conv, reduce_conv)

Kernel = tuple[int, int]


class Block(nn.Module):
  """Parallel branches concatenated on channels; subclasses give `branches()`."""
  opts: LayerOptions = LayerOptions()

  def branches(self) -> Sequence[Layers]:
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return concat_branches(self.branches(), self.opts, x, train)


class Mixed(Block):
  """A block whose branches are given as data (the stems' mixed layers)."""
  layout: tuple[Layers, ...] = ()

  def branches(self) -> Sequence[Layers]:
    return self.layout


class ResidualBlock(Block):
  """Inception-ResNet unit: `act(x + scale * expand(concat(branches)))` (paper Fig. 20).

  The expansion is a linear 1x1 conv with bias, back to the input depth, with no
  BatchNorm (sec. 3.2). `use_residual=False` drops the shortcut (and the scale,
  which only exists to keep the sum stable) for the paper's ablation, keeping
  every parameter. What sec. 3.3's deaths are made of is sown for monitoring
  (`residual_stats`).
  """
  scale: float = 1.0
  activation: bool = True
  use_residual: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mixed = concat_branches(self.branches(), self.opts, x, train)
    up = Conv2D(x.shape[-1], (1, 1), self.opts, use_bias=True, name='Conv2d_1x1')(mixed)
    out = x + self.scale * up if self.use_residual else up
    out = nn.relu(out) if self.activation else out
    stats = residual_stats(x if self.use_residual else None, up, out, self.opts.kernels)
    for name, value in stats.items():
      self.sow('intermediates', name, value)
    return out


def residual_stats(shortcut: jax.Array | None, branch: jax.Array, out: jax.Array,
                   kernels: ops.Reference) -> dict[str, jax.Array]:
  """A residual block's monitor (paper sec. 3.3), in float32, from one pass of channel sums.

  `branch_rms`: the RMS of the expansion's output before the scale, so that a growing
  branch is told apart from a shrinking shortcut (`shortcut_rms`, absent without one).
  `dead_channels`: the fraction of output channels with no positive value in the batch,
  which the next ReLU (or the one after the sum) turns into zeros everywhere. A metric
  only: the gradient is stopped first (jax's JVP of a variadic reduce is a tree of slices).
  """
  def squares(v):
    return jnp.square(lax.stop_gradient(v).astype(jnp.float32))
  arrays = [squares(branch), (lax.stop_gradient(out) > 0).astype(jnp.float32)]
  if shortcut is not None:
    arrays.append(squares(shortcut))
  sums = kernels.channel_sums(*arrays)
  stats = {'branch_rms': jnp.sqrt(jnp.sum(sums[0]) / branch.size),
           'dead_channels': jnp.mean((sums[1] == 0).astype(jnp.float32))}
  if shortcut is not None:
    stats['shortcut_rms'] = jnp.sqrt(jnp.sum(sums[2]) / shortcut.size)
  return stats


# --- Stems -------------------------------------------------------------------

class Stem(Block):
  """A stem with the knobs of the lower-resolution study (v3 paper sec. 9).

  `stride` is the first conv's (2 in the figures); `pool=False` replaces the first
  3x3/2 max pool by an identity, keeping every later layer's name and weights. At
  equal parameters and about equal cost: 299 px with (2, True), 151 px with
  (1, True) and 79 px with (1, False) all reach the 35x35 grid (36x36 for 79 px).
  """
  stride: int = 2
  pool: bool = True

  @property
  def first_pool(self) -> Pool:
    return MAX_POOL_REDUCE if self.pool else IDENTITY_POOL


class StemV3(Stem):
  """Inception-v3 stem (v3 paper Table 1; TF-Slim Conv2d_1a..MaxPool_5a): 299 -> 35x35x192.

  Also the stem of the TF-Slim / Keras / timm Inception-ResNet-v2.
  """

  def branches(self) -> Sequence[Layers]:
    return ((conv(32, 3, self.stride, 'VALID'), conv(32, 3, padding='VALID'), conv(64, 3),
             self.first_pool, conv(80, 1, padding='VALID'), conv(192, 3, padding='VALID'),
             MAX_POOL_REDUCE),)


class StemResNetV1(Stem):
  """Inception-ResNet-v1 stem (paper Fig. 14): 299 -> 35x35x256."""

  def branches(self) -> Sequence[Layers]:
    return ((conv(32, 3, self.stride, 'VALID'), conv(32, 3, padding='VALID'), conv(64, 3),
             self.first_pool, conv(80, 1), conv(192, 3, padding='VALID'), reduce_conv(256)),)


class StemV4(nn.Module):
  """Inception-v4 and Inception-ResNet-v2 stem (paper Fig. 3): 299 -> 35x35x384.

  `stride` is the first conv's; its first max pool is a branch of Mixed_3a, so it
  has no `pool` switch.
  """
  opts: LayerOptions = LayerOptions()
  stride: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    valid = dict(padding='VALID')
    layers = (
        ('Conv2d', ((conv(32, 3, self.stride, 'VALID'), conv(32, 3, **valid), conv(64, 3)),)),
        ('Mixed_3a', ((MAX_POOL_REDUCE,), (reduce_conv(96),))),
        ('Mixed_4a', ((conv(64), conv(96, 3, **valid)),
                      (conv(64), conv(64, (1, 7)), conv(64, (7, 1)), conv(96, 3, **valid)))),
        ('Mixed_5a', ((reduce_conv(192),), (MAX_POOL_REDUCE,))),
    )
    for name, layout in layers:
      x = Mixed(self.opts, layout, name=name)(x, train)
    return x


# --- Inception-v4 (and Inception-v3) blocks -----------------------------------

class InceptionA(Block):
  """Inception-A, 35x35 grid (paper Fig. 4)."""
  b0: int = 96
  b1: tuple[int, int] = (64, 96)
  b1_kernel: int = 3
  b2: tuple[int, int, int] = (64, 96, 96)
  pool: int = 96

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0),),
            (conv(self.b1[0]), conv(self.b1[1], self.b1_kernel)),
            (conv(self.b2[0]), conv(self.b2[1], 3), conv(self.b2[2], 3)),
            (AVG_POOL, conv(self.pool)))


class InceptionV3A(InceptionA):
  """Inception-v3 35x35 module (v3 paper Fig. 5 as released: TF-Slim Mixed_5b-5d).

  A 5x5 branch beside the factorized double 3x3; with `b0=96, pool=64` it is
  Mixed_5b of the TF-Slim Inception-ResNet-v2.
  """
  b0: int = 64
  b1: tuple[int, int] = (48, 64)
  b1_kernel: int = 5
  pool: int = 32


class ReductionA(Block):
  """Reduction-A, 35x35 -> 17x17 (paper Fig. 7; k, l, m, n of Table 1).

  With k=64, l=96, m=96, n=384 it is Inception-v3's Mixed_6a (v3 paper Fig. 10).
  """
  k: int = 192
  l: int = 224
  m: int = 256
  n: int = 384

  def branches(self) -> Sequence[Layers]:
    return ((reduce_conv(self.n),),
            (conv(self.k), conv(self.l, 3), reduce_conv(self.m)),
            (MAX_POOL_REDUCE,))


class InceptionB(Block):
  """Inception-B, 17x17 grid (paper Fig. 5): 7x7 convs factorized as 1x7 and 7x1.

  `b2_first` is the kernel the double branch starts with: 1x7 in the figure, 7x1 in
  TF-Slim. With v3 widths it is Inception-v3's Mixed_6b-6e (v3 paper Fig. 6).
  """
  b0: int = 384
  b1: tuple[int, ...] = (192, 224, 256)
  b2: tuple[int, ...] = (192, 192, 224, 224, 256)
  b2_first: Kernel = (1, 7)
  pool: int = 128

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0),),
            (conv(self.b1[0]),) + alternating(self.b1[1:], (1, 7)),
            (conv(self.b2[0]),) + alternating(self.b2[1:], self.b2_first),
            (AVG_POOL, conv(self.pool)))


class ReductionB(Block):
  """Reduction-B of Inception-v4, 17x17 -> 8x8 (paper Fig. 8).

  With b0=(192, 320), b1=(192,)*4 it is Inception-v3's Mixed_7a (v3 paper Fig. 10).
  """
  b0: tuple[int, int] = (192, 192)
  b1: tuple[int, int, int, int] = (256, 256, 320, 320)

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0[0]), reduce_conv(self.b0[1])),
            (conv(self.b1[0]), conv(self.b1[1], (1, 7)), conv(self.b1[2], (7, 1)),
             reduce_conv(self.b1[3])),
            (MAX_POOL_REDUCE,))


class InceptionC(Block):
  """Inception-C, 8x8 grid (paper Fig. 6): branches that end in a 1x3 | 3x1 fork.

  `b2_kernels` are the double branch's middle convs: 1x3 then 3x1 in the figure,
  3x1 then 1x3 in TF-Slim.
  """
  b0: int = 256
  b1: int = 384
  b2: tuple[int, ...] = (384, 448, 512)
  b2_kernels: tuple[Kernel, ...] = ((1, 3), (3, 1))
  fork: int = 256
  pool: int = 256

  def branches(self) -> Sequence[Layers]:
    fork = Fork((conv(self.fork, (1, 3)), conv(self.fork, (3, 1))))
    middle = tuple(conv(w, k) for w, k in zip(self.b2[1:], self.b2_kernels))
    return ((conv(self.b0),),
            (conv(self.b1), fork),
            (conv(self.b2[0]),) + middle + (fork,),
            (AVG_POOL, conv(self.pool)))


class InceptionV3C(InceptionC):
  """Inception-v3 8x8 module with expanded filter banks (v3 paper Fig. 7; Mixed_7b-7c)."""
  b0: int = 320
  b1: int = 384
  b2: tuple[int, ...] = (448, 384)
  b2_kernels: tuple[Kernel, ...] = ((3, 3),)
  fork: int = 384
  pool: int = 192


class AuxHead(nn.Module):
  """Auxiliary classifier on the 17x17 grid (v3 paper sec. 4 and Fig. 8; slim AuxLogits).

  5x5/3 average pool, 1x1 conv 128, 5x5 VALID conv 768, linear. Below 299 px
  the pool shrinks to the grid and the 5x5 conv sees its window zero-padded,
  so the parameters do not depend on the image size.
  """
  num_classes: int
  opts: LayerOptions = LayerOptions()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    window = min(5, x.shape[1], x.shape[2])
    x = self.opts.kernels.avg_pool(x, (window, window), (3, 3), 'VALID', False)
    x = ConvBN(conv(128), self.opts, name='Conv2d_1b_1x1')(x, train)
    pad_h, pad_w = max(0, 5 - x.shape[1]), max(0, 5 - x.shape[2])
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    x = ConvBN(conv(768, 5, padding='VALID'), self.opts, name='Conv2d_2a_5x5')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='Logits')(x)  # As the network's.


# --- Inception-ResNet blocks ---------------------------------------------------

class InceptionResNetA(ResidualBlock):
  """Inception-ResNet-A, 35x35 grid (paper Fig. 16 for v2, Fig. 10 for v1; slim block35)."""
  b0: int = 32
  b1: tuple[int, int] = (32, 32)
  b2: tuple[int, int, int] = (32, 48, 64)

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0),),
            (conv(self.b1[0]), conv(self.b1[1], 3)),
            (conv(self.b2[0]), conv(self.b2[1], 3), conv(self.b2[2], 3)))


class InceptionResNetB(ResidualBlock):
  """Inception-ResNet-B, 17x17 grid (paper Fig. 17 for v2, Fig. 11 for v1; slim block17)."""
  b0: int = 192
  b1: tuple[int, int, int] = (128, 160, 192)

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0),), (conv(self.b1[0]),) + alternating(self.b1[1:], (1, 7)))


class InceptionResNetC(ResidualBlock):
  """Inception-ResNet-C, 8x8 grid (paper Fig. 19 for v2, Fig. 13 for v1; slim block8)."""
  b0: int = 192
  b1: tuple[int, int, int] = (192, 224, 256)

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0),), (conv(self.b1[0]),) + alternating(self.b1[1:], (1, 3)))


class InceptionResNetReductionB(Block):
  """Reduction-B of the Inception-ResNets, 17x17 -> 8x8 (paper Fig. 18 for v2, Fig. 12
  for v1; slim Mixed_7a)."""
  b0: tuple[int, int] = (256, 384)
  b1: tuple[int, int] = (256, 288)
  b2: tuple[int, int, int] = (256, 288, 320)

  def branches(self) -> Sequence[Layers]:
    return ((conv(self.b0[0]), reduce_conv(self.b0[1])),
            (conv(self.b1[0]), reduce_conv(self.b1[1])),
            (conv(self.b2[0]), conv(self.b2[1], 3), reduce_conv(self.b2[2])),
            (MAX_POOL_REDUCE,))
