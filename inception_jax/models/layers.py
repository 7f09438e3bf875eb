"""The layers every Inception block is made of: conv -> BatchNorm -> ReLU, and pools.

A block is written as data: each branch is a tuple of layer specs (`Conv`, `Pool`,
`Fork`), and `concat_branches` builds and concatenates them. Every block of
`blocks.py` and every stem is one such table, so that width scaling, dtype,
BatchNorm settings and the 1x1-as-matmul trick live in this one file.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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
  conv_backward_nhwc: bool = False  # Larger kernels' gradients as forward NHWC convs.
  merge_pointwise: bool = True    # Parallel branches' opening 1x1 convs as one matmul.

  def width(self, features: int) -> int:
    """Scales a filter count by `width_multiplier`, rounded, at least 8."""
    if self.width_multiplier == 1.0:
      return features
    return max(8, int(round(features * self.width_multiplier)))

  @property
  def conv_general_dilated(self):
    """The convolution primitive handed to `nn.Conv`."""
    return functools.partial(_conv, conv1x1_as_dot=self.conv1x1_as_dot,
                             backward_nhwc=self.conv_backward_nhwc)

  def conv(self, x: jax.Array, kernel: jax.Array, strides: int = 1,
           padding: str = 'SAME') -> jax.Array:
    """An NHWC/HWIO conv in this network's dtype, as `nn.Conv` computes it."""
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return self.conv_general_dilated(x, kernel, (strides, strides), padding,
                                     dimension_numbers=_NHWC)


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


def _conv(lhs, rhs, window_strides, padding, *, conv1x1_as_dot: bool, backward_nhwc: bool,
          **kwargs):
  """lax.conv_general_dilated in the forms XLA:CPU differentiates fastest.

  The kernel keeps its (kh, kw, C, F) shape and the forward pass its result, so
  parameters, checkpoints and outputs do not depend on these switches:
  - `conv1x1_as_dot`: a 1x1 stride-1 conv is a dot over channels (its weight
    gradient as a convolution runs at a fraction of a matmul's speed);
  - `backward_nhwc`: any other conv computes its gradients as forward NHWC convs
    (see `_conv_nhwc_backward`).
  """
  plain = (all(d == 1 for d in kwargs.get('lhs_dilation') or (1, 1)) and
           all(d == 1 for d in kwargs.get('rhs_dilation') or (1, 1)) and
           kwargs.get('feature_group_count', 1) == 1)
  if conv1x1_as_dot and plain and rhs.shape[:2] == (1, 1) and tuple(window_strides) == (1, 1):
    # Over an (N*H*W, C) view: with one contracting axis the weight gradient is one
    # transposed-operand matmul; contracting N, H and W made XLA:CPU copy dy transposed.
    out = jnp.dot(lhs.reshape(-1, lhs.shape[-1]), rhs[0, 0], precision=kwargs.get('precision'))
    return out.reshape(*lhs.shape[:-1], rhs.shape[-1])
  if backward_nhwc and plain and rhs.shape[:2] != (1, 1):
    pads = padding
    if isinstance(padding, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return _conv_nhwc_backward(lhs, rhs, tuple(window_strides),
                               tuple(tuple(p) for p in pads), kwargs.get('precision'))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _taps(padded: jax.Array, window: Sequence[int], strides: Sequence[int],
          out_hw: Sequence[int]) -> Iterator[tuple[int, int, jax.Array]]:
  """(a, b, view) for each tap of a window, row-major: `view[n, i, j, c]` is the padded
  NHWC input under tap (a, b) of output (i, j)'s window."""
  (sh, sw), (ho, wo) = strides, out_hw
  for a in range(window[0]):
    for b in range(window[1]):
      yield a, b, padded[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc_backward(x, kernel, strides, pads, precision):
  """An NHWC conv whose gradients are themselves forward NHWC/HWIO convs.

  jax's transpose rule gives a conv's gradients as convolutions with swapped
  dimension numbers. Outside loops XLA:CPU rewrites them into the forms below and
  runs them on Eigen; in the body of a scan it does not, and they run on its generic
  convolution, 60-110x slower (benchmarks/README.md (j), (p)). Written out here, the
  rewrite holds everywhere, at the speed of XLA's own outside loops.
  """
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _nhwc_backward_fwd(x, kernel, strides, pads, precision):
  return _conv_nhwc_backward(x, kernel, strides, pads, precision), (x, kernel)


def _data_grad(dy, kernel, pads, precision):
  """The input gradient of a stride-1 NHWC conv, as an NHWC/HWIO conv of `dy`.

  It is the full correlation of `dy` with the kernel rotated 180 degrees, input and
  output channels swapped.
  """
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  full = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], pads))
  return lax.conv_general_dilated(dy, flipped, (1, 1), full, dimension_numbers=_NHWC,
                                  precision=precision)


def _weight_grad(x, dy, kernel_shape, strides, pads, precision):
  """The kernel gradient of an NHWC conv, as an NHWC/HWIO conv of the transposed `x`.

  `dW[a, b, c, f]` sums `x_padded[n, s*i + a, s*j + b, c] * dy[n, i, j, f]` over n, i
  and j: a conv with the channels C as its batch, the images N as its features and
  `dy` as its kernel, dilated by the stride.
  """
  (kh, kw), (sh, sw), (ho, wo) = kernel_shape[:2], strides, dy.shape[1:3]
  # The rows and columns that a strided window never reaches are cut, so that the
  # VALID output is exactly (kh, kw).
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))[:, :sh * (ho - 1) + kh, :sw * (wo - 1) + kw]
  grad = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1),
                                  'VALID', rhs_dilation=strides, dimension_numbers=_NHWC,
                                  precision=precision)
  return grad.transpose(1, 2, 0, 3)  # (C, kh, kw, F) -> HWIO


def _nhwc_backward_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  # SAME and VALID pads are below the kernel size, so the full correlation's are >= 0.
  if strides == (1, 1) and all(max(p) < k for k, p in zip(kernel.shape[:2], pads)):
    dx = _data_grad(dy, kernel, pads, precision)
  else:  # Strided convs are outside the scanned blocks, where XLA rewrites its own.
    _, data_vjp = jax.vjp(lambda x: lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=_NHWC, precision=precision), x)
    dx, = data_vjp(dy)
  grad = _weight_grad(x, dy, kernel.shape, strides, pads, precision)
  return dx.astype(x.dtype), grad.astype(kernel.dtype)


_conv_nhwc_backward.defvjp(_nhwc_backward_fwd, _nhwc_backward_bwd)


def _add_tuples(u, v):
  return tuple(a + b for a, b in zip(u, v))


def channel_sums(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """The sums of each array over every axis but channels, in one pass over all of them.

  One variadic reduce over H of an (N, H, W*C) view, then a small sum over N and W:
  XLA:CPU runs this 2-8x faster than `sum` over (N, H, W), which it splits into tiled
  reduce-windows, or than one reduce over N*H (benchmarks/README.md (k), (l)).
  """
  shape = arrays[0].shape
  axes = tuple(range(len(shape) - 1))
  if len(shape) > 3:
    arrays, axes = tuple(a.reshape(shape[0], -1, shape[-2] * shape[-1]) for a in arrays), (1,)
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  partial = lax.reduce(arrays, zeros, _add_tuples, axes)
  partial = tuple(p.reshape(-1, shape[-1]) for p in partial)
  if len(partial) > 1:
    return tuple(p.sum(0) for p in partial)
  # XLA merges a plain reduce followed by a sum back into the slow sum; a variadic one it
  # keeps. A matrix-vector product it keeps too, but compiles slower: only used here.
  ones = jnp.ones(partial[0].shape[0], partial[0].dtype)
  return (jnp.dot(ones, partial[0], precision=lax.Precision.HIGHEST),)


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance over every axis but channels, in float32, as flax's BatchNorm."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n = x.size // x.shape[-1]
  total, squares = channel_sums(x, jnp.square(x))
  mean = total / n
  return mean, jnp.maximum(0.0, squares / n - jnp.square(mean))


def _normalize_relu(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
                    bias: jax.Array, epsilon: float) -> jax.Array:
  y = (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
  return nn.relu(y).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_relu(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> jax.Array:
  """ReLU(BatchNorm(x)) with batch statistics, and its gradient written out.

  Autodiff of the normalization differentiates the mean and the variance apart and
  XLA:CPU compiles each piece as its own kernels; the closed form needs two channel
  sums and one elementwise pass (IR-v2 compile -5 to -7 s: benchmarks/README (i)).
  """
  return _normalize_relu(x, *_batch_stats(x), scale, bias, epsilon)


def _batch_norm_relu_fwd(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  y = _normalize_relu(x, mean, var, scale, bias, epsilon)
  return y, (x, mean, var, scale, y)


def _batch_norm_relu_bwd(epsilon, residuals, dy):
  x, mean, var, scale, y = residuals
  dy = jnp.where(y > 0, dy, 0).astype(mean.dtype)
  inv_std = lax.rsqrt(var + epsilon)
  x_hat = (x - mean) * inv_std
  dbias, dscale = channel_sums(dy, dy * x_hat)
  n = x.size // x.shape[-1]
  dx = (scale * inv_std) * (dy - (dbias + x_hat * dscale) / n)
  return dx.astype(x.dtype), dscale, dbias  # Statistics and parameters are float32.


_batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)


class BatchNormReLU(nn.Module):
  """`nn.relu(nn.BatchNorm(...)(x))` over channels: the same variables, names and values.

  In training, the channel sums are added in another order than flax's (equal up to
  rounding) and the gradient is the closed form of `_batch_norm_relu` rather than
  autodiff's; inference is bitwise flax's. Statistics are computed in float32 with
  E[x^2] - E[x]^2, and under `jit` with a sharded batch they are those of the global
  batch, as with `nn.BatchNorm`.
  """
  use_running_average: bool
  momentum: float
  epsilon: float
  use_scale: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = (self.param('scale', nn.initializers.ones_init(), features, jnp.float32)
             if self.use_scale else jnp.ones(features, jnp.float32))
    bias = self.param('bias', nn.initializers.zeros_init(), features, jnp.float32)
    if self.use_running_average:
      return _normalize_relu(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
    if not self.is_initializing():
      # XLA computes these sums once: the same ones feed `_batch_norm_relu`. The gradient
      # is stopped before them: tracing a variadic reduce's JVP costs seconds a network.
      mean, var = _batch_stats(lax.stop_gradient(x))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return _batch_norm_relu(x, scale, bias, self.epsilon)


def _kernel_param(module: nn.Module, window: tuple[int, int], in_features: int,
                  features: int) -> jax.Array:
  """`module`'s 'kernel', named, shaped and initialized as `nn.Conv`'s."""
  return module.param('kernel', nn.initializers.lecun_normal(),
                      (*window, in_features, features), jnp.float32)


class ConvKernel(nn.Module):
  """The kernel of `nn.Conv(features, window)`, as the only variable of this module."""
  features: int
  window: tuple[int, int]

  @nn.compact
  def __call__(self, in_features: int) -> jax.Array:
    return _kernel_param(self, self.window, in_features, self.features)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU, the unit of every Inception figure.

  `part='kernel'` returns the conv's kernel only, and `part='bn'` takes `x` as the conv's
  output: `concat_branches` computes the 1x1 convs of parallel branches as one product.
  """
  spec: Conv
  opts: LayerOptions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, part: str = 'all') -> jax.Array:
    o = self.opts
    if part != 'bn':
      kernel = ConvKernel(o.width(self.spec.features), self.spec.kernel, name='conv')(x.shape[-1])
      if part == 'kernel':
        return kernel
      x = o.conv(x, kernel, self.spec.strides, self.spec.padding)
    return BatchNormReLU(not train, o.bn_momentum, o.bn_epsilon, o.bn_scale, o.dtype,
                         name='bn')(x)


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """`y + bias` over channels, whose bias gradient is one `channel_sums` pass.

  jax transposes the broadcast into a sum over (N, H, W), which XLA:CPU runs 3-13x
  slower at IR-v2's shapes (benchmarks/README.md (l)).
  """
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, dy):
  # `bias` has y's dtype (promoted by the caller); the sum itself runs in float32.
  dbias, = channel_sums(dy.astype(jnp.promote_types(dy.dtype, jnp.float32)))
  return dy, dbias.astype(dy.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv1x1Bias(nn.Module):
  """A 1x1 conv with bias: `nn.Conv(features, (1, 1))`'s variables, names and outputs.

  The residual expansion of Fig. 20 (the one conv with a bias and no BatchNorm),
  written out for `_add_bias`'s faster gradient.
  """
  features: int
  opts: LayerOptions

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = _kernel_param(self, (1, 1), x.shape[-1], self.features)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    y = self.opts.conv(x, kernel)
    return _add_bias(y, bias.astype(y.dtype))


def pool(spec: Pool, x: jax.Array) -> jax.Array:
  window, strides = (spec.window, spec.window), (spec.strides, spec.strides)
  if spec.kind == 'max':
    return _max_pool(x, window, strides, spec.padding)
  return nn.avg_pool(x, window, strides, spec.padding, count_include_pad=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
              padding: str) -> jax.Array:
  """`nn.max_pool` whose gradient goes to the first maximum of each window, as in TF.

  XLA differentiates a max pool with a variadic reduce-window that tracks the argmax
  with index arrays, then scatters; here each of the window's taps is one strided
  compare and pad, which XLA fuses into a few loops (3.5x faster: benchmarks/README (i)).
  """
  return nn.max_pool(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  x, y = residuals
  pads = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  (sh, sw), (ho, wo) = strides, y.shape[1:3]
  dx, taken = jnp.zeros(x.shape, dy.dtype), jnp.zeros(y.shape, bool)
  for a, b, tap in _taps(x, window, strides, (ho, wo)):
    hit = (tap == y) & ~taken  # Only the first maximum in row-major window order.
    taken |= hit
    # Back to the input grid: interior padding spreads the outputs `stride` apart.
    dx += lax.pad(jnp.where(hit, dy, 0), jnp.zeros((), dy.dtype),
                  ((0, 0, 0), (a, x.shape[1] - a - sh * (ho - 1) - 1, sh - 1),
                   (b, x.shape[2] - b - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
  (top, bottom), (left, right) = pads
  return (dx[:, top:x.shape[1] - bottom, left:x.shape[2] - right],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class Branch(nn.Module):
  """One branch of a block: its layers applied in turn.

  Convs are named `Conv2d_<position>_<kernel>` under `Branch_<i>`, after
  TF-Slim's scopes, so a parameter path reads like the checkpoint it maps to.
  `first` is the output of the first conv, computed by `concat_branches`, and
  `part='kernel'` returns that conv's kernel (see `ConvBN`).
  """
  layers: Layers
  opts: LayerOptions

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, first: jax.Array | None = None,
               part: str = 'all') -> jax.Array:
    for j, layer in enumerate(self.layers):
      if isinstance(layer, Pool):
        x = pool(layer, x)
      elif isinstance(layer, Conv):
        unit = ConvBN(layer, self.opts, name=f'Conv2d_{j}_{layer.name}')
        if part == 'kernel':
          return unit(x, part='kernel')
        x = unit(first, train, part='bn') if j == 0 and first is not None else unit(x, train)
      else:
        x = jnp.concatenate(
            [ConvBN(c, self.opts, name=f'Conv2d_{j}_{c.name}')(x, train) for c in layer.convs],
            axis=-1)
    return x


def _is_pointwise(layer: Layer) -> bool:
  return isinstance(layer, Conv) and layer.kernel == (1, 1) and layer.strides == 1


def concat_branches(branches: Sequence[Layers], opts: LayerOptions, x: jax.Array,
                    train: bool) -> jax.Array:
  """Applies parallel branches to `x` and concatenates them on channels.

  Called from a block's compact `__call__`: the branches become its submodules.
  Branches that open with a 1x1 conv have those convs computed as one, with the
  kernels concatenated (BatchNorm is per channel, so the function is the same):
  one matmul reads `x` and one gives its gradient, instead of one each and their
  sum (benchmarks/README.md (m)). Each kernel stays in its branch's variables.
  """
  units = [Branch(tuple(b), opts, name=f'Branch_{i}') for i, b in enumerate(branches)]
  merged = [i for i, b in enumerate(branches) if b and _is_pointwise(b[0])]
  firsts = {}
  if opts.merge_pointwise and len(merged) > 1:
    kernels = [units[i](x, train, part='kernel') for i in merged]
    widths = [k.shape[-1] for k in kernels]
    out = opts.conv(x, jnp.concatenate(kernels, axis=-1))
    firsts = dict(zip(merged, jnp.split(out, np.cumsum(widths)[:-1].tolist(), axis=-1)))
  return jnp.concatenate([u(x, train, firsts.get(i)) for i, u in enumerate(units)], axis=-1)


def alternating(widths: Sequence[int], first: tuple[int, int], n: int = 7) -> tuple[Conv, ...]:
  """Factorized n x n convs: 1xn and nx1 in turn, starting with `first`."""
  kernels = [first, first[::-1]]
  return tuple(conv(w, kernels[i % 2]) for i, w in enumerate(widths))
