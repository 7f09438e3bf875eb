"""The kernel sets: each primitive against plain lax/Flax, and the HLO the CPU rules give.

`reference` is checked against the Flax/lax ops it stands for; `xla_cpu` against
`reference` (values and gradients), and its rules by what XLA:CPU compiles them to.
"""

import re
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from inception_jax import ops
from inception_jax.models import create_model, layers

SETS = [ops.Reference(), ops.XlaCpu()]
NHWC = ('NHWC', 'HWIO', 'NHWC')
EIGEN = {'xla_cpu_experimental_ynn_fusion_type': ''}  # XLA:CPU's Eigen kernels, as xla_cpu's.


def _ids(kernels):
  return kernels.name


def test_auto_picks_by_the_platform_the_step_is_compiled_for():
  assert ops.AUTO == {'cpu': 'xla_cpu', 'gpu': 'reference', 'tpu': 'xla_tpu'}
  for platform, name in [('cpu', 'xla_cpu'), ('tpu', 'xla_tpu'), ('gpu', 'reference'),
                         ('cuda', 'reference')]:
    assert ops.resolve('auto', platform) == name
    assert create_model('inception_v4', platform=platform).kernels == name
  assert ops.resolve('reference', 'cpu') == 'reference'
  assert ops.platform_of(jax.devices()) == 'cpu'
  # The kernel set of the model is what `kernels` names; its options go to every jit.
  assert create_model('inception_v4', platform='tpu').compiler_options is None
  model = create_model('inception_v4', kernels='xla_cpu', cpu_conv_library='ynnpack')
  assert model.kernel_set == ops.XlaCpu('ynnpack')
  with pytest.raises(ValueError, match="kernels='tpu' is invalid; valid: auto, reference"):
    ops.resolve('tpu')


@pytest.mark.parametrize('kernel, strides, padding', [
    ((3, 3), 1, 'VALID'), ((3, 3), 2, 'SAME'), ((7, 1), 1, 'SAME'), ((1, 7), 1, 'SAME'),
    ((5, 5), 2, 'VALID'), ((3, 1), 2, 'SAME'), ((3, 3), 1, 'SAME'), ((1, 1), 1, 'SAME'),
    ((2, 4), 1, 'SAME')])  # Even kernels: uneven SAME pads in the stride-1 data gradient.
@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_conv_and_its_gradients_are_lax_conv(kernels, kernel, strides, padding):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 12, 11, 5), jnp.float32)  # Odd sizes: uneven SAME padding.
  w = jnp.asarray(rng.randn(*kernel, 5, 6), jnp.float32)

  def loss(f, x, w):
    y = f(x, w)
    return jnp.sum(jnp.sin(y)), y

  ours = lambda x, w: kernels.conv(x, w, (strides, strides), padding)
  plain = lambda x, w: lax.conv_general_dilated(x, w, (strides, strides), padding,
                                                dimension_numbers=NHWC)
  (_, got), got_grads = jax.jit(jax.value_and_grad(
      lambda x, w: loss(ours, x, w), (0, 1), has_aux=True))(x, w)
  (_, want), want_grads = jax.jit(jax.value_and_grad(
      lambda x, w: loss(plain, x, w), (0, 1), has_aux=True))(x, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, r in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def _bfloat16_conv_losses() -> Iterator[tuple]:
  """Float32 weights on a bfloat16 input, per stride and padding: the weights, the loss of
  the conv and the loss of the same conv in float32."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(8, 9, 9, 16), jnp.bfloat16)
  w = jnp.asarray(rng.randn(3, 3, 16, 8) * 0.1, jnp.float32)
  for strides, padding in [((1, 1), 'SAME'), ((2, 2), 'VALID')]:
    loss = lambda w, s=strides, p=padding: jnp.sum(
        ops.Reference().conv(x, w, s, p).astype(jnp.float32))
    exact = lambda w, s=strides, p=padding: jnp.sum(lax.conv_general_dilated(
        x.astype(jnp.float32), w, s, p, dimension_numbers=NHWC))
    yield w, loss, exact


@pytest.mark.perf
def test_bfloat16_conv_sums_its_weight_gradient_in_float32():
  """The float32 kernel's gradient leaves the batch sum in float32 (the all-reduce's dtype):
  a bf16 x bf16 convolution with a float32 result."""
  for w, loss, _ in _bfloat16_conv_losses():
    text = jax.jit(jax.grad(loss)).lower(w).as_text()
    assert re.search(r'stablehlo.convolution.*\(tensor<[^>]*bf16>, tensor<[^>]*bf16>\) -> '
                     r'tensor<3x3x16x8xf32>', text), text


def test_bfloat16_conv_weight_gradient_is_the_float32_one_to_bfloat16_precision():
  for w, loss, exact in _bfloat16_conv_losses():
    np.testing.assert_allclose(jax.grad(loss)(w), jax.grad(exact)(w), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('group_size', [0, 2])
@pytest.mark.parametrize('use_scale', [False, True])
@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_batch_norm_relu_is_flax_batch_norm_then_relu(kernels, use_scale, group_size):
  x = jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 3 + 1
  weight = jax.random.normal(jax.random.key(1), x.shape)  # A loss that weighs every output.
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3,
                         use_scale=use_scale)
  ours = layers.BatchNormReLU(0.9, 1e-3, use_scale, group_size, kernels=kernels)
  variables = flax_bn.init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(2), x, train=False)) == jax.tree.map(
      jnp.shape, variables)
  # Statistics and parameters away from their initial values.
  variables = jax.tree.map(lambda v: v + 0.3 * jax.random.normal(jax.random.key(3), v.shape),
                           variables)
  groups = x.shape[0] // (group_size or x.shape[0])

  def want_fn(variables, x):
    # flax's BatchNorm applied to each group of images; running averages of the mean over
    # the groups of their statistics (the same update, applied once).
    parts = [flax_bn.apply(variables, g, mutable=['batch_stats'])
             for g in jnp.split(x, groups)]
    y = nn.relu(jnp.concatenate([p[0] for p in parts]))
    stats = jax.tree.map(lambda *s: sum(s) / groups, *[p[1] for p in parts])
    return jnp.sum(y * weight), (y, stats)

  def got_fn(variables, x):
    y, updates = ours.apply(variables, x, train=True, mutable=['batch_stats'])
    return jnp.sum(y * weight), (y, updates)

  (_, (want, want_stats)), want_grads = jax.jit(jax.value_and_grad(
      want_fn, (0, 1), has_aux=True))(variables, x)
  (_, (got, got_stats)), got_grads = jax.jit(jax.value_and_grad(
      got_fn, (0, 1), has_aux=True))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
               got_stats, want_stats)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Inference uses the running statistics: flax's values, bitwise.
  np.testing.assert_array_equal(
      ours.apply(variables, x, train=False),
      nn.relu(flax_bn.clone(use_running_average=True).apply(variables, x)))


def test_a_group_size_that_does_not_divide_the_batch_is_named():
  bn = layers.BatchNormReLU(0.9, 1e-3, False, 3)
  x = jnp.ones((4, 3, 3, 2))
  variables = bn.init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match='bn_group_size=3 does not divide the batch of 4'):
    bn.apply(variables, x, train=True, mutable=['batch_stats'])


@pytest.mark.parametrize('spec', [layers.MAX_POOL_REDUCE, layers.Pool('max'),
                                  layers.Pool('max', strides=2), layers.IDENTITY_POOL])
@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_max_pool_and_its_gradient_are_flax_max_pool(kernels, spec):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))  # Odd/even sides: uneven SAME pads.
  window, strides = (spec.window,) * 2, (spec.strides,) * 2
  y = nn.max_pool(x, window, strides, spec.padding)
  weight = jax.random.normal(jax.random.key(1), y.shape)
  opts = layers.LayerOptions(kernels=kernels)
  ours = jax.grad(lambda x: jnp.sum(layers.pool(spec, x, opts) * weight))(x)
  want = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides, spec.padding) * weight))(x)
  np.testing.assert_array_equal(layers.pool(spec, x, opts), y)
  np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6)  # Sums in another order.


@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_max_pool_gradient_goes_to_the_first_maximum(kernels):
  # Two equal maxima in one 3x3 window: TF's MaxPoolGrad picks the first in row-major order.
  x = jnp.zeros((1, 3, 3, 1)).at[0, 0, 2, 0].set(1.0).at[0, 2, 0, 0].set(1.0)
  opts = layers.LayerOptions(kernels=kernels)
  grad = jax.grad(lambda x: jnp.sum(layers.pool(layers.MAX_POOL_REDUCE, x, opts)))(x)
  np.testing.assert_array_equal(grad[0, :, :, 0], [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_max_pool_after_batch_norm_under_jit_equals_eager(kernels):
  """XLA may fuse the BatchNorm into both the pool and its gradient, rounding each copy
  differently: a gradient that finds the maximum again by comparing values loses it."""
  z = jax.random.normal(jax.random.key(0), (4, 37, 37, 8))
  scale, bias = jnp.full(8, 1.1), jnp.full(8, 0.05)

  def loss(z):
    y, _, _ = kernels.batch_norm_relu(z, scale, bias, 1e-3)
    return jnp.sum(kernels.max_pool(y, (3, 3), (2, 2), 'VALID'))

  np.testing.assert_allclose(jax.jit(jax.grad(loss))(z), jax.grad(loss)(z), atol=1e-5)


@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_conv_with_bias_is_flax_conv(kernels):
  """The residual expansion of Fig. 20: `nn.Conv(features, (1, 1))`'s variables and outputs."""
  ours = layers.Conv2D(6, (1, 1), layers.LayerOptions(kernels=kernels), use_bias=True)
  flax_conv = nn.Conv(6, (1, 1), use_bias=True)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  variables = flax_conv.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), variables)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # A nonzero bias.
  np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x),
                             rtol=1e-6, atol=1e-6)
  loss = lambda m, v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  got = jax.grad(loss, (1, 2))(ours, variables, x)
  want = jax.grad(loss, (1, 2))(flax_conv, variables, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(3, 5, 7, 4), (2, 3, 4), (6, 4)])
@pytest.mark.parametrize('kernels', SETS, ids=_ids)
def test_channel_sums_sum_over_every_axis_but_channels(kernels, shape):
  a = np.random.RandomState(0).randn(*shape).astype(np.float32)
  axes = tuple(range(len(shape) - 1))
  total, squares = kernels.channel_sums(jnp.asarray(a), jnp.asarray(a * a))
  np.testing.assert_allclose(total, a.sum(axes, dtype=np.float64), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(squares, (a * a).sum(axes, dtype=np.float64), rtol=1e-5)
  alone, = kernels.channel_sums(jnp.asarray(a))
  np.testing.assert_allclose(alone, total, rtol=1e-6, atol=1e-6)


# --- What the xla_cpu rules compile to on XLA:CPU. --------------------------------

@pytest.mark.perf
def test_1x1_weight_gradient_is_one_matmul_without_a_transposed_copy():
  """The 1x1 dot contracts one axis of an (N*H*W, C) view; contracting N, H and W of
  the 4-d arrays made XLA:CPU copy the output gradient transposed first."""
  x = jnp.ones((2, 6, 6, 8))
  w = jnp.ones((1, 1, 8, 16))

  def transposes(f):
    grad = jax.grad(lambda w: jnp.sum(jnp.sin(f(x, w))))
    return jax.jit(grad, compiler_options=EIGEN).lower(w).compile().as_text().count(
        ' transpose(')

  assert transposes(lambda x, w: ops.XlaCpu().conv(x, w, (1, 1), 'SAME')) == 0
  assert transposes(lambda x, w: jnp.einsum('nhwc,cf->nhwf', x, w[0, 0])) >= 1


@pytest.mark.perf
def test_conv_gradients_inside_a_scan_compile_to_nhwc_convs_only():
  """Inside a scan's loop XLA:CPU keeps jax's transposed gradient convs, which run on its
  generic convolution; written out, every conv of the loop is a forward NHWC/HWIO one."""
  x = jnp.ones((3, 2, 9, 9, 8))
  w = jnp.ones((3, 3, 8, 8))

  def labels(kernels):
    def loss(w):
      body = lambda h, x: (kernels.conv(x + h, w, (1, 1), 'SAME'), None)
      return jnp.sum(jnp.sin(lax.scan(body, jnp.zeros(x.shape[1:]), x)[0]))
    compiled = jax.jit(jax.grad(loss), compiler_options=EIGEN).lower(w).compile().as_text()
    return set(re.findall(r'convolution\(.*dim_labels=(\S+?),', compiled))

  assert labels(ops.XlaCpu()) == {'b01f_01io->b01f'}
  # jax's own: the forward conv, and the gradients' transposed ones (b01f_01oi, f01b_i01o).
  assert labels(ops.Reference()) > {'b01f_01io->b01f'}


@pytest.mark.perf
def test_weight_gradient_transposes_the_stored_input_on_its_own():
  """The (C, H, W, N) copy of a conv's input for its weight gradient reads the stored
  input only: fused with the BatchNorm + ReLU that made the input, or with the padding,
  XLA:CPU's transposing loop ran 2.5-6x slower."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))
  kernels = ops.XlaCpu()

  def loss(w):
    return jnp.sum(jnp.sin(kernels.conv(jnp.maximum(x * 1.1, 0), w, (1, 1), 'SAME')))

  text = jax.jit(jax.grad(loss), compiler_options=kernels.compiler_options(False, 'cpu')).lower(
      jnp.ones((3, 3, 8, 16))).compile().as_text()
  transposed = re.findall(r'= f32\[8,9,9,2\]\{3,2,1,0\} fusion\(([^)]*)\)', text)
  assert transposed and all(re.fullmatch(r'%optimization_barrier[\w.]*', t) for t in transposed)


@pytest.mark.perf
def test_bias_gradient_is_a_vector_matrix_product_without_a_transposed_copy():
  """The partial channel sums are the product's right operand: as its left one (an
  einsum 'gkc,k->gc') XLA:CPU copied them transposed first."""
  y = jax.random.normal(jax.random.key(0), (2, 5, 5, 24))

  def transposes(add_bias):
    grad = jax.grad(lambda b: jnp.sum(jnp.sin(add_bias(y * 0.1, b))))
    return jax.jit(grad, compiler_options=EIGEN).lower(jnp.zeros(24)).compile().as_text().count(
        ' transpose(')

  assert transposes(ops.XlaCpu().add_bias) == 0


def _pool_gradient_hlo(kernels: ops.Reference, group_size: int = 0) -> str:
  """XLA:CPU's program for the gradient of conv -> BatchNorm + ReLU -> 3x3/2 max pool."""
  x = jax.random.normal(jax.random.key(0), (4, 21, 21, 8))
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8)) * 0.3

  def loss(w):
    y, _, _ = kernels.batch_norm_relu(kernels.conv(x, w, (1, 1), 'SAME'), jnp.ones(8),
                                      jnp.zeros(8), 1e-3, group_size)
    return jnp.sum(jnp.sin(kernels.max_pool(y, (3, 3), (2, 2), 'VALID')))

  options = {**EIGEN, 'xla_disable_hlo_passes': 'cse_barrier_expander'}
  return jax.jit(jax.grad(loss), compiler_options=options).lower(w).compile().as_text()


@pytest.mark.perf
def test_max_pool_gradient_needs_no_index_arrays_and_no_scatter():
  """xla_cpu keeps one int8 tap index per output; XLA's own gradient builds int32 index
  arrays of the input's size for a variadic reduce-window, then scatters."""
  ours = _pool_gradient_hlo(ops.XlaCpu())
  assert not re.search(r's32\[4,21,21,8\]| (select-and-)?scatter\(', ours)
  assert re.search(r's8\[4,10,10,8\]', ours)
  theirs = _pool_gradient_hlo(ops.Reference())
  assert re.search(r's32\[4,21,21,8\]', theirs) and re.search(r' (select-and-)?scatter\(', theirs)


@pytest.mark.perf
def test_max_pool_gradient_taps_are_summed_once():
  """With the batch as one BatchNorm group, no (1, N, ...) view sits between the pool's
  gradient and the BatchNorm's, and XLA:CPU sums the nine taps' pads in one loop; through
  such a view it summed them again in each consumer, reading nine arrays each time."""
  def most_full_size_operands(text):
    shapes = dict(re.findall(r'%([\w.\-]+) = (f32\[[\d,]+\])', text))
    return max(sum(shapes.get(o) == 'f32[4,21,21,8]' for o in re.findall(r'%([\w.\-]+)', ops_))
               for ops_ in re.findall(r'= \S+ fusion\(([^)]*)\)', text))

  assert most_full_size_operands(_pool_gradient_hlo(ops.XlaCpu())) <= 3


TINY = dict(width_multiplier=0.125, num_classes=7)
X = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 75, 75, 3)), jnp.float32)


@pytest.mark.perf
def test_each_residual_block_output_is_computed_once():
  """Unrolled, no fusion re-derives a block's output from earlier blocks' expansions.

  Without the kept barrier XLA:CPU fuses a stage's chain of residual sums into every
  consumer, so one loop reads the expansion (the block's last 1x1 conv) of many blocks.
  """
  model = create_model('inception_resnet_v2', kernels='xla_cpu', repeats=(4, 4, 4),
                       dropout_rate=0.0, **TINY)
  variables = model.init(jax.random.key(0), X)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, X, train=True,
                            mutable=['batch_stats'])
    return jnp.sum(logits)

  def most_expansions_in_one_fusion(options):
    text = jax.jit(jax.grad(loss), compiler_options=options).lower(
        variables['params']).compile().as_text()
    # The forward dots of the blocks' expansions (not their gradients).
    expansions = {name for name, op in re.findall(r'%(dot[\w.]*) = [^\n]*op_name="([^"]*)"', text)
                  if re.search(r'InceptionResNet[ABC]_\d+/Conv2d_1x1/', op)
                  and 'transpose(' not in op}
    assert len(expansions) >= 9
    return max(len(set(re.findall(r'%(dot[\w.]*)', operands)) & expansions)
               for operands in re.findall(r'= \S+ fusion\(([^)]*)\)', text))

  options = model.compiler_options
  assert options['xla_disable_hlo_passes'] == 'cse_barrier_expander'
  assert most_expansions_in_one_fusion(options) <= 1
  # What XLA:CPU does with the barriers dropped, as by default.
  dropped = {k: v for k, v in options.items() if k != 'xla_disable_hlo_passes'}
  assert most_expansions_in_one_fusion(dropped) >= 3


LIBRARY_KW = dict(kernels='xla_cpu', repeats=(1, 1, 1), **TINY)


def _compiled_per_conv_library() -> tuple[list, tuple]:
  """The forward pass compiled with Eigen's and with YNNPACK's convolutions, and its args."""
  eigen, ynnpack = (create_model('inception_resnet_v2', cpu_conv_library=library, **LIBRARY_KW)
                    for library in ('eigen', 'ynnpack'))
  variables = eigen.init(jax.random.key(0), X)
  x = jnp.tile(X, (4, 1, 1, 1))  # Enough rows for XLA to hand the 1x1 dots to YNNPACK.
  compiled = [jax.jit(lambda v, x, model=model: model.apply(v, x),
                      compiler_options=model.compiler_options).lower(variables, x).compile()
              for model in (eigen, ynnpack)]
  return compiled, (variables, x)


@pytest.mark.perf
def test_cpu_conv_library_ynnpack_hands_the_dots_to_ynnpack():
  (eigen, ynnpack), _ = _compiled_per_conv_library()
  assert '__ynn_fusion' not in eigen.as_text() and '__ynn_fusion' in ynnpack.as_text()


def test_cpu_conv_library_chooses_the_library_not_the_function():
  (eigen, ynnpack), (variables, x) = _compiled_per_conv_library()
  np.testing.assert_allclose(eigen(variables, x), ynnpack(variables, x), rtol=1e-4, atol=1e-5)
  # A scan also compiles with XLA's older loop emitters and LLVM at -O2, with either library;
  # same function.
  scan_options = {'xla_cpu_use_fusion_emitters': False, 'xla_backend_optimization_level': 2}
  scanned = create_model('inception_resnet_v2', scan_blocks=True, **LIBRARY_KW)
  assert scanned.compiler_options == {**EIGEN, **scan_options}
  assert create_model('inception_resnet_v2', scan_blocks=True, cpu_conv_library='ynnpack',
                      **LIBRARY_KW).compiler_options == scan_options
  variables = scanned.init(jax.random.key(0), X)
  np.testing.assert_allclose(
      jax.jit(scanned.apply, compiler_options=scanned.compiler_options)(variables, x),
      jax.jit(scanned.apply)(variables, x), rtol=1e-5, atol=1e-6)
