"""The layers every Inception block is made of: conv -> BatchNorm -> ReLU, and pools.

A block is written as data: each branch is a tuple of layer specs (`Conv`, `Pool`,
`Fork`), and `concat_branches` builds and concatenates them. Every block of
`blocks.py` and every stem is one such table, so that width scaling, dtype and
BatchNorm settings live in this one file. Which primitives compute a layer is the
kernel set's business (`inception_jax.ops`, `LayerOptions.kernels`): the code here
is the same for every backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import ops
from inception_jax.ops.reference import normalize_relu


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """Settings shared by every layer of a network (hashable: a Flax module field)."""
  width_multiplier: float = 1.0
  bn_scale: bool = False          # TF-Slim and Keras have no gamma; timm has one.
  bn_momentum: float = 0.9997     # TF-Slim's batch_norm_decay.
  bn_epsilon: float = 1e-3
  bn_group_size: int = 0          # Images per BatchNorm statistics group; 0: the whole batch.
  dtype: Any = jnp.float32        # Computation dtype; params stay float32.
  kernels: ops.Reference = ops.Reference()
  avg_pool_include_pad: bool = False  # TF-Slim's pools exclude the padding; torchvision's count it.

  def width(self, features: int) -> int:
    """Scales a filter count by `width_multiplier`, rounded, at least 8."""
    if self.width_multiplier == 1.0:
      return features
    return max(8, int(round(features * self.width_multiplier)))


@dataclasses.dataclass(frozen=True)
class Conv:
  """A conv -> BN -> ReLU layer: `kernel` is (height, width) as in slim's `[1, 7]`."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: str = 'SAME'

  @property
  def name(self) -> str:
    return f'{self.kernel[0]}x{self.kernel[1]}'


@dataclasses.dataclass(frozen=True)
class Pool:
  """3x3 max or average pool (average excludes the padding, as in TensorFlow)."""
  kind: str  # 'max' or 'avg'
  strides: int = 1
  padding: str = 'SAME'
  window: int = 3


@dataclasses.dataclass(frozen=True)
class Fork:
  """Parallel convs on the same input, concatenated (the 1x3 | 3x1 split of Fig. 6)."""
  convs: tuple[Conv, ...]


Layer = Union[Conv, Pool, Fork]
Layers = tuple[Layer, ...]


def conv(features: int, kernel: int | tuple[int, int] = 1, strides: int = 1,
         padding: str = 'SAME') -> Conv:
  if isinstance(kernel, int):
    kernel = (kernel, kernel)
  return Conv(features, tuple(kernel), strides, padding)


def reduce_conv(features: int, kernel: int = 3) -> Conv:
  """The stride-2 VALID conv that halves a grid ('3x3/2 V' in the figures)."""
  return conv(features, kernel, strides=2, padding='VALID')


MAX_POOL_REDUCE = Pool('max', strides=2, padding='VALID')
# A 1x1 pool: an identity that holds a removed pool's place, so later layers keep their names.
IDENTITY_POOL = Pool('max', window=1)
AVG_POOL = Pool('avg')


class Conv2D(nn.Module):
  """A conv with `nn.Conv`'s variables ('kernel', 'bias'), names and initializers.

  The kernel stays float32; the kernel set casts it to the input's dtype.
  """
  features: int
  kernel_size: tuple[int, int]
  opts: LayerOptions
  strides: int = 1
  padding: str = 'SAME'
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    x = x.astype(self.opts.dtype)
    y = self.opts.kernels.conv(x, kernel, (self.strides, self.strides), self.padding)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
      y = self.opts.kernels.add_bias(y, bias)
    return y


class BatchNormReLU(nn.Module):
  """`nn.relu(nn.BatchNorm(...)(x))` over channels: the same variables, names and values.

  In training the statistics are those of each group of `group_size` images (0: the
  whole batch; under `jit` with a sharded batch, the global batch), in float32; the
  running averages take the mean over the groups of their means and variances.
  """
  momentum: float
  epsilon: float
  use_scale: bool
  group_size: int = 0
  dtype: Any = jnp.float32
  kernels: ops.Reference = ops.Reference()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.astype(self.dtype)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = (self.param('scale', nn.initializers.ones_init(), features, jnp.float32)
             if self.use_scale else jnp.ones(features, jnp.float32))
    bias = self.param('bias', nn.initializers.zeros_init(), features, jnp.float32)
    if not train:
      return normalize_relu(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
    y, mean, var = self.kernels.batch_norm_relu(x, scale, bias, self.epsilon, self.group_size)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU, the unit of every Inception figure."""
  spec: Conv
  opts: LayerOptions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    o, s = self.opts, self.spec
    x = Conv2D(o.width(s.features), s.kernel, o, s.strides, s.padding, name='conv')(x)
    return BatchNormReLU(o.bn_momentum, o.bn_epsilon, o.bn_scale, o.bn_group_size, o.dtype,
                         o.kernels, name='bn')(x, train)


def pool(spec: Pool, x: jax.Array, opts: LayerOptions) -> jax.Array:
  window, strides = (spec.window, spec.window), (spec.strides, spec.strides)
  if spec.kind == 'max':
    return opts.kernels.max_pool(x, window, strides, spec.padding)
  return opts.kernels.avg_pool(x, window, strides, spec.padding, opts.avg_pool_include_pad)


class Branch(nn.Module):
  """One branch of a block: its layers applied in turn.

  Convs are named `Conv2d_<position>_<kernel>` under `Branch_<i>`, after
  TF-Slim's scopes, so a parameter path reads like the checkpoint it maps to.
  """
  layers: Layers
  opts: LayerOptions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for j, layer in enumerate(self.layers):
      if isinstance(layer, Pool):
        x = pool(layer, x, self.opts)
      elif isinstance(layer, Conv):
        x = ConvBN(layer, self.opts, name=f'Conv2d_{j}_{layer.name}')(x, train)
      else:
        x = jnp.concatenate(
            [ConvBN(c, self.opts, name=f'Conv2d_{j}_{c.name}')(x, train) for c in layer.convs],
            axis=-1)
    return x


def concat_branches(branches: Sequence[Layers], opts: LayerOptions, x: jax.Array,
                    train: bool) -> jax.Array:
  """Applies parallel branches to `x` and concatenates them on channels.

  Called from a block's compact `__call__`: the branches become its submodules.
  """
  return jnp.concatenate([Branch(tuple(b), opts, name=f'Branch_{i}')(x, train)
                          for i, b in enumerate(branches)], axis=-1)


def alternating(widths: Sequence[int], first: tuple[int, int]) -> tuple[Conv, ...]:
  """Factorized n x n convs: 1 x n and n x 1 in turn, starting with `first`."""
  kernels = [first, first[::-1]]
  return tuple(conv(w, kernels[i % 2]) for i, w in enumerate(widths))
