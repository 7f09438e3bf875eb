"""The `reference` kernel set: plain lax and Flax ops with autodiff gradients.

What XLA:GPU and XLA:TPU are tuned for, and the definition every other set is
tested against. Each method is one primitive of the paper's layers; a set for a
backend subclasses this one and overrides what it computes differently.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

NHWC = ('NHWC', 'HWIO', 'NHWC')
BN_STATISTICS = 'bn_statistics'  # The name `scan_policy` keeps them by.
Pads = tuple[tuple[int, int], ...]


def num_groups(batch: int, group_size: int) -> int:
  """How many BatchNorm statistics groups of `group_size` images a batch holds (0: one)."""
  size = group_size or batch
  if batch % size:
    raise ValueError(f'bn_group_size={group_size} does not divide the batch of {batch} images '
                     'in training; use a divisor of the per-step batch')
  return batch // size


def as_groups(x: jax.Array, groups: int) -> jax.Array:
  """(N, ...) -> (groups, N / groups, ...).

  The batch axis is split, so under `jit` a group that lies on one device is reduced
  there, without a collective.
  """
  return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])


def normalize_relu(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
                   bias: jax.Array, epsilon: float) -> jax.Array:
  """ReLU((x - mean) / sqrt(var + eps) * scale + bias) in float32, in flax's order."""
  y = (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
  return nn.relu(y).astype(x.dtype)


def dense_convs_saveable(prim: Any, *args: Any, **params: Any) -> bool:
  """A checkpoint policy: the outputs of dots and of convs that mix channels.

  A grouped conv (an average pool of `xla_tpu`) is recomputed from its input, as a
  pool is: cheap, and each one kept would be a float32 activation per scanned block.
  """
  return (jax.checkpoint_policies.dots_saveable(prim, *args, **params)
          and params.get('feature_group_count', 1) == 1)


def padding_pairs(x_hw: Sequence[int], window: Sequence[int], strides: Sequence[int],
                  padding: str | Pads) -> Pads:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_hw, window, strides, padding))
  return tuple(tuple(p) for p in padding)


def padded_windows(x: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int],
                   pads: Pads, out_hw: Sequence[int]) -> jax.Array:
  """`x` padded, without the rows and columns that no strided window reaches.

  A VALID conv of it with a (ho, wo) kernel dilated by the stride is (kh, kw): the
  shape of a kernel gradient.
  """
  (kh, kw), (sh, sw), (ho, wo) = kernel_shape[:2], strides, out_hw
  return jnp.pad(x, ((0, 0), *pads, (0, 0)))[:, :sh * (ho - 1) + kh, :sw * (wo - 1) + kw]


def weight_grad_f32(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                    strides: tuple[int, int], pads: Pads) -> jax.Array:
  """The HWIO kernel gradient of an NHWC conv, accumulated and returned in float32.

  `dW[a, b, c, f]` sums `x_padded[n, s*i + a, s*j + b, c] * dy[n, i, j, f]` over the
  batch and the grid: a conv of `x` (channels as batch, images as features) with `dy`
  as its kernel, dilated by the stride. With the batch sharded, this sum is what the
  gradient all-reduce adds up, so its output dtype is the all-reduce's.
  """
  x = padded_windows(x, kernel_shape, strides, pads, dy.shape[1:3])
  return lax.conv_general_dilated(x, dy, (1, 1), 'VALID', rhs_dilation=strides,
                                  dimension_numbers=('CHWN', 'IHWO', 'HWNC'),
                                  preferred_element_type=jnp.float32)


def window_taps(window: Sequence[int], strides: Sequence[int],
                out_hw: Sequence[int]) -> Iterator[tuple[int, int, tuple[slice, slice]]]:
  """(a, b, rows and columns) for each tap of a window, row-major: the strided slice of
  the padded NHWC input under tap (a, b) of every output's window."""
  (sh, sw), (ho, wo) = strides, out_hw
  for a in range(window[0]):
    for b in range(window[1]):
      yield a, b, (slice(a, a + sh * (ho - 1) + 1, sh), slice(b, b + sw * (wo - 1) + 1, sw))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_f32_grad(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                   pads: Pads) -> jax.Array:
  """A conv in `x`'s dtype of a float32 kernel whose gradient is reduced in float32.

  Autodiff casts the kernel to bf16 first, so its gradient is summed over the batch in
  bf16 and all-reduced in bf16 across devices; here the cast sits after that sum.
  """
  return lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, pads,
                                  dimension_numbers=NHWC)


def _conv_f32_grad_fwd(x, kernel, strides, pads):
  return _conv_f32_grad(x, kernel, strides, pads), (x, kernel)


def _conv_f32_grad_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  _, data_vjp = jax.vjp(lambda x: lax.conv_general_dilated(
      x, kernel.astype(x.dtype), strides, pads, dimension_numbers=NHWC), x)
  dx, = data_vjp(dy)
  return dx, weight_grad_f32(x, dy, kernel.shape, strides, pads).astype(kernel.dtype)


_conv_f32_grad.defvjp(_conv_f32_grad_fwd, _conv_f32_grad_bwd)


@dataclasses.dataclass(frozen=True)
class Reference:
  """Plain lax/Flax ops (hashable: it is a field of the Flax modules).

  `flat_updates`: whether the optimizer updates one flat vector (`optax.flatten`) instead
  of each parameter: hundreds fewer kernels for XLA:CPU and XLA:GPU to compile.
  """
  name: ClassVar[str] = 'reference'
  flat_updates: ClassVar[bool] = True

  def conv(self, x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: str | Pads) -> jax.Array:
    """An NHWC/HWIO conv of `x` (compute dtype) with a float32 `kernel`.

    In float32 it is `lax.conv_general_dilated`; in a narrower compute dtype the kernel
    gradient is still accumulated in float32 (`_conv_f32_grad`).
    """
    if x.dtype.itemsize >= kernel.dtype.itemsize:
      return lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding,
                                      dimension_numbers=NHWC)
    pads = padding_pairs(x.shape[1:3], kernel.shape[:2], strides, padding)
    return _conv_f32_grad(x, kernel, tuple(strides), pads)

  def batch_norm_relu(self, x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                      group_size: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training BatchNorm + ReLU over channels, with statistics per group of images.

    Returns the output and the statistics for the running averages (the mean over the
    groups of each group's mean and variance; no gradient flows through them). The
    statistics are float32, `E[x^2] - E[x]^2` as `flax.linen.BatchNorm` computes them.
    """
    xg = as_groups(x, num_groups(x.shape[0], group_size)).astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(1, xg.ndim - 1))
    mean = jnp.mean(xg, axes, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(jnp.square(xg), axes, keepdims=True) - jnp.square(mean))
    mean, var = checkpoint_name((mean, var), BN_STATISTICS)
    y = normalize_relu(xg, mean, var, scale, bias, epsilon).astype(x.dtype)
    stats = (lax.stop_gradient(jnp.mean(s, axis=tuple(range(s.ndim - 1)))) for s in (mean, var))
    return (y.reshape(x.shape), *stats)

  def max_pool(self, x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
               padding: str) -> jax.Array:
    return nn.max_pool(x, window, strides, padding)

  @property
  def scan_policy(self) -> Callable[..., bool] | None:
    """What a scanned block keeps for its backward pass (a `jax.checkpoint` policy).

    Autodiff of this set's BatchNorm saves float32 copies of each activation, which a
    scan stacks for every block: 20.4 GB of temporaries on a v5e chip against 7.2 GB
    unrolled, where XLA fuses them away (benchmarks/README.md, "Compile time"). Kept:
    the conv outputs and the batch statistics; the normalization is recomputed. None
    would keep all that autodiff saves.
    """
    return jax.checkpoint_policies.save_from_both_policies(
        dense_convs_saveable, jax.checkpoint_policies.save_only_these_names(BN_STATISTICS))

  def avg_pool(self, x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
               padding: str, count_include_pad: bool) -> jax.Array:
    """An average pool; without `count_include_pad` the zero padding is not counted (TF)."""
    return nn.avg_pool(x, window, strides, padding, count_include_pad=count_include_pad)

  def add_bias(self, y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` over channels; the float32 bias's gradient is summed in float32."""
    return (y + bias).astype(y.dtype)

  def channel_sums(self, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The sum of each array over every axis but the last."""
    return tuple(jnp.sum(a, axis=tuple(range(a.ndim - 1))) for a in arrays)

  def select_tree(self, pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """`on_true` where the scalar `pred` holds, else `on_false` (a skipped update).

    A `where` per leaf: the predicate stays on the device (XLA:GPU runs a `cond` by
    copying its predicate to the host, a sync every step).
    """
    return jax.tree.map(lambda t, f: jnp.where(pred, t, f), on_true, on_false)

  def block_output(self, x: jax.Array) -> jax.Array:
    """Where a residual block's output leaves it (a set may want it materialized)."""
    return x

  def compiler_options(self, scan_blocks: bool, platform: str) -> dict[str, Any] | None:
    """XLA options for every jit of a network computed with this set on `platform`."""
    del scan_blocks, platform
    return None
