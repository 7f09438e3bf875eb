"""The `xla_cpu` kernel set: the forms of each primitive that XLA:CPU runs fastest.

Every method computes the same function as `Reference`'s (tested to float rounding:
tests/test_ops.py); what changes is the HLO that XLA:CPU gets. Each rule says why it
is faster on CPU; `benchmarks/README.md` has its measured effect. On XLA:TPU the
same rules triple a step's memory traffic, so `auto` picks this set on CPU only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from inception_jax.ops.reference import (NHWC, Pads, Reference, as_groups, normalize_relu,
                                         num_groups, padded_windows, padding_pairs,
                                         window_taps)

CONV_LIBRARIES = ('eigen', 'ynnpack')


@dataclasses.dataclass(frozen=True)
class XlaCpu(Reference):
  """`conv_library`: which library XLA:CPU runs convolutions and dots with.

  'eigen' runs the small-channel stem convs 2-3x faster than YNNPACK, and the whole
  network trains and infers faster with it, scanned or not.
  """
  name: ClassVar[str] = 'xla_cpu'
  # Its own gradients keep only what they use (bf16 inputs, f32 statistics): a scan
  # stacks those as they are.
  scan_policy: ClassVar[None] = None
  conv_library: str = 'eigen'

  def conv(self, x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: str | Pads) -> jax.Array:
    """A 1x1 stride-1 conv as a matmul, any other with forward-NHWC gradients.

    The 1x1 conv's weight gradient as a convolution runs at a fraction of a matmul's
    speed. It is a dot over an (N*H*W, C) view: with one contracting axis the weight
    gradient is one transposed-operand matmul (contracting N, H and W made XLA:CPU copy
    dy transposed). The kernel is cast to `x`'s dtype first; in bf16 the weight
    gradients are then summed in bf16, which XLA:CPU's all-reduce promotes to float32.
    """
    kernel = kernel.astype(x.dtype)
    if kernel.shape[:2] == (1, 1) and tuple(strides) == (1, 1):
      out = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0])
      return out.reshape(*x.shape[:-1], kernel.shape[-1])
    pads = padding_pairs(x.shape[1:3], kernel.shape[:2], strides, padding)
    return _conv_nhwc_backward(x, kernel, tuple(strides), pads)

  def batch_norm_relu(self, x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                      group_size: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`Reference.batch_norm_relu` with its gradient in closed form (`_batch_norm_relu`).

    The statistics for the running averages are taken of `x` with its gradient stopped
    (tracing a variadic reduce's JVP costs seconds a network); XLA computes these sums
    once, the same ones feed the normalization.
    """
    groups = num_groups(x.shape[0], group_size)
    mean, var = _batch_stats(lax.stop_gradient(x), groups)
    return _batch_norm_relu(x, scale, bias, epsilon, groups), mean.mean(0), var.mean(0)

  def max_pool(self, x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
               padding: str) -> jax.Array:
    return _max_pool(x, window, strides, padding_pairs(x.shape[1:3], window, strides, padding))

  def add_bias(self, y: jax.Array, bias: jax.Array) -> jax.Array:
    return _add_bias(y, bias)

  def channel_sums(self, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    return _channel_sums(arrays)

  def select_tree(self, pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """One `cond` rather than a `where` per leaf: XLA:CPU compiles no kernel per leaf
    (-12 s of IR-v2's compile), and the CPU is its own host."""
    return lax.cond(pred, lambda: on_true, lambda: on_false)

  def block_output(self, x: jax.Array) -> jax.Array:
    """A barrier that XLA:CPU is told to keep (`compiler_options`), unrolled.

    Without it XLA:CPU fuses a stage's whole chain of elementwise residual sums into
    each consumer, re-reading every earlier block's expansion: with it each block's
    output is computed once (train step -22%). XLA:GPU and TPU keep barriers anyway.
    """
    return lax.optimization_barrier(x)

  def compiler_options(self, scan_blocks: bool, platform: str) -> dict[str, Any] | None:
    """XLA:CPU's options; none elsewhere (XLA:TPU refuses a kept barrier)."""
    if platform != 'cpu':
      return None
    options: dict[str, Any] = {}
    if not scan_blocks:
      # Keep `block_output`'s barriers (XLA:CPU drops them before fusion). A scan's carry
      # is computed once anyway, and there the kept barrier costs time.
      options['xla_disable_hlo_passes'] = 'cse_barrier_expander'
    if self.conv_library == 'eigen':
      options['xla_cpu_experimental_ynn_fusion_type'] = ''  # No YNNPACK: XLA's Eigen kernels.
    if scan_blocks:
      # The older loop emitters compile a scanned step a quarter to a third faster for 3-10%
      # of step time; unrolled they cost more than they save. LLVM at -O2, not -O3: 0.6-1.3 s
      # less compile, the same step time.
      options['xla_cpu_use_fusion_emitters'] = False
      options['xla_backend_optimization_level'] = 2
    return options


# --- Convolutions: gradients as forward NHWC convs. ------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc_backward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                        pads: Pads) -> jax.Array:
  """An NHWC conv whose gradients are themselves forward NHWC/HWIO convs.

  jax's transpose rule gives a conv's gradients as convolutions with swapped
  dimension numbers. Outside loops XLA:CPU rewrites them into the forms below and
  runs them on Eigen; in the body of a scan it does not, and they run on its generic
  convolution, 60-110x slower. Written out here, the rewrite holds everywhere, at the
  speed of XLA's own outside loops.
  """
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=NHWC)


def _nhwc_backward_fwd(x, kernel, strides, pads):
  return _conv_nhwc_backward(x, kernel, strides, pads), (x, kernel)


def _data_grad(dy: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  """The input gradient of a stride-1 NHWC conv, as an NHWC/HWIO conv of `dy`.

  It is the full correlation of `dy` with the kernel rotated 180 degrees, input and
  output channels swapped.
  """
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  full = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], pads))
  return lax.conv_general_dilated(dy, flipped, (1, 1), full, dimension_numbers=NHWC)


def _weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                 strides: tuple[int, int], pads: Pads) -> jax.Array:
  """The kernel gradient of an NHWC conv, as an NHWC/HWIO conv of the transposed `x`.

  `Reference`'s `weight_grad_f32` sum, with the channels C as the batch, the images N
  as the features and `dy` as the kernel, written with transposes so that the conv
  itself is in the NHWC/HWIO form that Eigen runs. `x` is transposed on its own, between
  barriers, and padded after: XLA:CPU runs a plain transpose of a stored array 2.5-6x
  faster than one fused with the recomputed BatchNorm + ReLU that produced `x` or with
  the padding, which walk the input once per channel.
  """
  xt = lax.optimization_barrier(lax.optimization_barrier(x).transpose(3, 1, 2, 0))
  xt = padded_windows(xt, kernel_shape, strides, pads, dy.shape[1:3])  # (C, H, W, N)
  grad = lax.conv_general_dilated(xt, dy.transpose(1, 2, 0, 3), (1, 1),
                                  'VALID', rhs_dilation=strides, dimension_numbers=NHWC)
  return grad.transpose(1, 2, 0, 3)  # (C, kh, kw, F) -> HWIO


def _nhwc_backward_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  # SAME and VALID pads are below the kernel size, so the full correlation's are >= 0.
  if strides == (1, 1) and all(max(p) < k for k, p in zip(kernel.shape[:2], pads)):
    dx = _data_grad(dy, kernel, pads)
  else:  # Strided convs are outside the scanned blocks, where XLA rewrites its own.
    _, data_vjp = jax.vjp(lambda x: lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=NHWC), x)
    dx, = data_vjp(dy)
  grad = _weight_grad(x, dy, kernel.shape, strides, pads)
  return dx.astype(x.dtype), grad.astype(kernel.dtype)


_conv_nhwc_backward.defvjp(_nhwc_backward_fwd, _nhwc_backward_bwd)


# --- Channel sums, BatchNorm + ReLU, the expansion's bias. -------------------------

def _add_tuples(u, v):
  return tuple(a + b for a, b in zip(u, v))


def _channel_sums(arrays: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
  """Each array's sums over every axis but channels, in one pass over all of them.

  One variadic reduce over H of an (N, H, W*C) view, then a small sum over N and W:
  XLA:CPU runs this 2-8x faster than `sum` over (N, H, W), which it splits into tiled
  reduce-windows, or than one reduce over N*H.
  """
  shape = arrays[0].shape
  views = tuple(a.reshape(shape[0], -1, shape[-2] * shape[-1]) if len(shape) == 4 else a
                for a in arrays)
  axes = (1,) if len(shape) == 4 else tuple(range(len(shape) - 1))
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  partial = lax.reduce(views, zeros, _add_tuples, axes)
  partial = tuple(p.reshape(-1, shape[-1]) for p in partial)
  if len(partial) > 1:
    return tuple(p.sum(0) for p in partial)
  # XLA merges a plain reduce followed by a sum back into the slow sum; a variadic one it
  # keeps. A vector-matrix product it keeps too, but compiles slower: only used here. The
  # ones come first: as `einsum('kc,k')` XLA:CPU copied the partial sums transposed (the
  # expansion's bias gradient then cost 5% of IR-v2's train step).
  ones = jnp.ones(partial[0].shape[0], partial[0].dtype)
  return (jnp.dot(ones, partial[0], precision=lax.Precision.HIGHEST),)


def _group_channel_sums(arrays: Sequence[jax.Array], groups: int) -> tuple[jax.Array, ...]:
  """`_channel_sums` of each group of the batch: (groups, C) each.

  One group is the batch itself, with no (1, N, ...) view: a reshape between each
  BatchNorm and its neighbours keeps XLA:CPU from fusing a pad through it, and the
  max-pool gradient's taps were then summed again in every consumer (train step +8%).
  """
  if groups == 1:
    return tuple(s[None] for s in _channel_sums(arrays))
  return jax.vmap(lambda *a: _channel_sums(a))(*(as_groups(a, groups) for a in arrays))


def _batch_stats(x: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of each group over every axis but channels, float32: (groups, C)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n = x.size // (groups * x.shape[-1])
  total, squares = _group_channel_sums((x, jnp.square(x)), groups)
  mean = total / n
  return mean, jnp.maximum(0.0, squares / n - jnp.square(mean))


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """`as_groups(x, groups)`, but `x` itself for one group (see `_group_channel_sums`)."""
  return x if groups == 1 else as_groups(x, groups)


def _per_image(stat: jax.Array, x: jax.Array) -> jax.Array:
  """(groups, C) -> broadcastable against `_grouped(x, groups)`."""
  if stat.shape[0] == 1:
    return stat[0]
  return stat.reshape(stat.shape[0], *(1,) * (x.ndim - 1), stat.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_relu(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     groups: int) -> jax.Array:
  """ReLU(BatchNorm(x)) with the statistics of each group, and its gradient written out.

  Autodiff of the normalization differentiates the mean and the variance apart and
  XLA:CPU compiles each piece as its own kernels; the closed form needs two channel
  sums and one elementwise pass (IR-v2 compile -5 to -7 s).
  """
  return _normalize_groups(x, *_batch_stats(x, groups), scale, bias, epsilon)


def _normalize_groups(x, mean, var, scale, bias, epsilon):
  y = normalize_relu(_grouped(x, mean.shape[0]), _per_image(mean, x), _per_image(var, x),
                     scale, bias, epsilon)
  return y.reshape(x.shape)


def _batch_norm_relu_fwd(x, scale, bias, epsilon, groups):
  mean, var = _batch_stats(x, groups)
  y = _normalize_groups(x, mean, var, scale, bias, epsilon)
  return y, (x, mean, var, scale, y)


def _batch_norm_relu_bwd(epsilon, groups, residuals, dy):
  x, mean, var, scale, y = residuals
  dy = _grouped(jnp.where(y > 0, dy, 0).astype(mean.dtype), groups)
  inv_std = lax.rsqrt(var + epsilon)
  x_hat = (_grouped(x, groups) - _per_image(mean, x)) * _per_image(inv_std, x)
  dbias, dscale = _group_channel_sums((dy.reshape(x.shape), (dy * x_hat).reshape(x.shape)),
                                      groups)
  n = x.size // (groups * x.shape[-1])
  dx = (scale * _per_image(inv_std, x)) * (
      dy - (_per_image(dbias, x) + x_hat * _per_image(dscale, x)) / n)
  # Statistics and parameters are float32.
  return dx.reshape(x.shape).astype(x.dtype), dscale.sum(0), dbias.sum(0)


_batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """`y + bias` over channels, whose bias gradient is one channel-sums pass, in float32.

  jax transposes the broadcast into a sum over (N, H, W), which XLA:CPU runs 3-13x
  slower at IR-v2's shapes.
  """
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return _add_bias(y, bias), bias


def _add_bias_bwd(bias, dy):
  dbias, = _channel_sums((dy.astype(jnp.promote_types(dy.dtype, jnp.float32)),))
  return dy, dbias.astype(bias.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


# --- Max pool: the gradient to the first maximum, by tap index. ---------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
              pads: Pads) -> jax.Array:
  """`nn.max_pool` whose gradient goes to the first maximum of each window, as in TF.

  XLA differentiates a max pool with a variadic reduce-window over the input and four
  int32 index arrays of its size, then a scatter. Here the forward pass walks the taps
  of the window (a strided slice each, one loop), keeping the maximum and the int8
  index of the tap that first reached it; the gradient is one strided pad per tap,
  summed in one loop. The index is kept rather than found again by comparing the
  input with the output, which XLA may recompute with other rounding; it is held
  behind a barrier, or XLA recomputes it from the input in each tap's loop.
  """
  return nn.max_pool(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  out_hw = tuple((p - k) // s + 1 for p, k, s in zip(padded.shape[1:3], window, strides))
  best = first = None
  for t, (_, _, (rows, cols)) in enumerate(window_taps(window, strides, out_hw)):
    tap = padded[:, rows, cols]
    if best is None:
      best, first = tap, jnp.zeros(tap.shape, jnp.int8)
    else:
      better = tap > best  # Strict: a tie keeps the earlier tap.
      best, first = jnp.where(better, tap, best), jnp.where(better, jnp.int8(t), first)
  best, first = lax.optimization_barrier((best, first))
  # A zero-size array carries the padded input's shape to the backward pass.
  return best, (first, jnp.zeros((0, *padded.shape[1:3]), jnp.int8))


def _max_pool_bwd(window, strides, pads, residuals, dy):
  first, padded_hw = residuals
  (hp, wp), (sh, sw), (ho, wo) = padded_hw.shape[1:], strides, dy.shape[1:3]
  dx = jnp.zeros((dy.shape[0], hp, wp, dy.shape[3]), dy.dtype)
  for t, (a, b, _) in enumerate(window_taps(window, strides, (ho, wo))):
    # Back to the input grid: interior padding spreads the outputs `stride` apart.
    dx += lax.pad(jnp.where(first == t, dy, 0), jnp.zeros((), dy.dtype),
                  ((0, 0, 0), (a, hp - a - sh * (ho - 1) - 1, sh - 1),
                   (b, wp - b - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
  (top, bottom), (left, right) = pads
  return (dx[:, top:hp - bottom, left:wp - right],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
