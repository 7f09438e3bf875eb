"""The layers every Inception block is made of: conv -> BatchNorm -> ReLU, and pools.

A block is written as data: each branch is a tuple of layer specs (`Conv`, `Pool`,
`Fork`), and `concat_branches` builds and concatenates them. Every block of
`blocks.py` and every stem is one such table, so that width scaling, dtype,
BatchNorm settings and the 1x1-as-matmul trick live in this one file.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """Settings shared by every conv of a network (hashable: a Flax module field)."""
  width_multiplier: float = 1.0
  bn_scale: bool = False          # TF-Slim and Keras have no gamma; timm has one.
  bn_momentum: float = 0.9997     # TF-Slim's batch_norm_decay.
  bn_epsilon: float = 1e-3
  conv1x1_as_dot: bool = True     # Same weights, faster weight gradient on CPU.
  dtype: Any = jnp.float32        # Computation dtype; params stay float32.
  conv_wgrad_as_dot: bool = False  # Weight gradient of larger kernels as one matmul.

  def width(self, features: int) -> int:
    """Scales a filter count by `width_multiplier`, rounded, at least 8."""
    if self.width_multiplier == 1.0:
      return features
    return max(8, int(round(features * self.width_multiplier)))

  @property
  def conv_general_dilated(self):
    """The convolution primitive handed to `nn.Conv`."""
    return functools.partial(_conv, conv1x1_as_dot=self.conv1x1_as_dot,
                             wgrad_as_dot=self.conv_wgrad_as_dot)


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


def _conv(lhs, rhs, window_strides, padding, *, conv1x1_as_dot: bool, wgrad_as_dot: bool,
          **kwargs):
  """lax.conv_general_dilated in the forms XLA:CPU differentiates fastest.

  The kernel keeps its (kh, kw, C, F) shape and the forward pass its result, so
  parameters, checkpoints and outputs do not depend on these switches:
  - `conv1x1_as_dot`: a 1x1 stride-1 conv is a dot over channels (its weight
    gradient as a convolution runs at a fraction of a matmul's speed);
  - `wgrad_as_dot`: any other conv computes its weight gradient as one matmul over
    image patches (see `_conv_wgrad_as_dot`).
  """
  plain = (all(d == 1 for d in kwargs.get('lhs_dilation') or (1, 1)) and
           all(d == 1 for d in kwargs.get('rhs_dilation') or (1, 1)) and
           kwargs.get('feature_group_count', 1) == 1)
  if conv1x1_as_dot and plain and rhs.shape[:2] == (1, 1) and tuple(window_strides) == (1, 1):
    return jnp.einsum('nhwc,cf->nhwf', lhs, rhs[0, 0], precision=kwargs.get('precision'))
  if wgrad_as_dot and plain and rhs.shape[:2] != (1, 1):
    pads = padding
    if isinstance(padding, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return _conv_wgrad_as_dot(lhs, rhs, tuple(window_strides),
                              tuple(tuple(p) for p in pads), kwargs.get('precision'))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


_NHWC = ('NHWC', 'HWIO', 'NHWC')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_wgrad_as_dot(x, kernel, strides, pads, precision):
  """An NHWC conv whose weight gradient is one matmul over image patches (im2col).

  XLA:CPU's convolution weight gradient runs at 3-15 GFLOP/s for the 3x3 stem
  convs and the 7x1 convs of the 17x17 blocks; the same sum as a matmul runs at
  13-58 GFLOP/s (benchmarks/README.md). The data gradient stays XLA's own.
  """
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _wgrad_fwd(x, kernel, strides, pads, precision):
  return _conv_wgrad_as_dot(x, kernel, strides, pads, precision), (x, kernel)


def _wgrad_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  _, data_vjp = jax.vjp(lambda x: lax.conv_general_dilated(
      x, kernel, strides, pads, dimension_numbers=_NHWC, precision=precision), x)
  kh, kw = kernel.shape[:2]
  (sh, sw), (ho, wo) = strides, dy.shape[1:3]
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  # patches[n, i, j, tap, c] is the input under kernel tap `tap` for output (i, j).
  patches = jnp.stack([x[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
                       for a in range(kh) for b in range(kw)], axis=3)
  grad = jnp.einsum('nijtc,nijf->tcf', patches, dy, precision=precision)
  return data_vjp(dy)[0], grad.reshape(kernel.shape).astype(kernel.dtype)


_conv_wgrad_as_dot.defvjp(_wgrad_fwd, _wgrad_bwd)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU, the unit of every Inception figure."""
  spec: Conv
  opts: LayerOptions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    o = self.opts
    x = nn.Conv(
        o.width(self.spec.features), self.spec.kernel, self.spec.strides,
        padding=self.spec.padding, use_bias=False, dtype=o.dtype,
        conv_general_dilated=o.conv_general_dilated,
        name='conv')(x)
    x = nn.BatchNorm(
        use_running_average=not train, momentum=o.bn_momentum, epsilon=o.bn_epsilon,
        use_scale=o.bn_scale, dtype=o.dtype, name='bn')(x)
    return nn.relu(x)


def pool(spec: Pool, x: jax.Array) -> jax.Array:
  window, strides = (spec.window, spec.window), (spec.strides, spec.strides)
  if spec.kind == 'max':
    return nn.max_pool(x, window, strides, spec.padding)
  return nn.avg_pool(x, window, strides, spec.padding, count_include_pad=False)


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
        x = pool(layer, x)
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
  return jnp.concatenate(
      [Branch(tuple(b), opts, name=f'Branch_{i}')(x, train) for i, b in enumerate(branches)],
      axis=-1)


def alternating(widths: Sequence[int], first: tuple[int, int], n: int = 7) -> tuple[Conv, ...]:
  """Factorized n x n convs: 1xn and nx1 in turn, starting with `first`."""
  kernels = [first, first[::-1]]
  return tuple(conv(w, kernels[i % 2]) for i, w in enumerate(widths))
