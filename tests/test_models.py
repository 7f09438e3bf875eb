"""The model zoo: exact parameter counts, stage shapes, options and their errors.

Full-size networks are only traced (`jax.eval_shape`, lowering); anything that
runs uses narrow widths at the minimum input size.
"""

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from inception_jax.models import blocks, create_model, layers, stack_repeats
from inception_jax.models.summary import format_table, stage_stats


def param_count(model, size: int = 299) -> int:
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('name, options, expected', [
    ('inception_v3', dict(bn_scale=True), 23_834_568),
    ('inception_v3', dict(bn_scale=True, aux_logits=True), 27_161_264),
    ('inception_v3', dict(bn_scale=False), 23_817_352),
    ('inception_v4', dict(bn_scale=True), 42_679_816),
    ('inception_resnet_v2', dict(bn_scale=True), 55_843_464),
    ('inception_resnet_v2', dict(bn_scale=False), 55_813_192),
])
def test_reference_parameter_counts(name, options, expected):
  # timm (with gamma) and Keras (without) counts of SPEC.md, 1000 classes, slim layout.
  assert param_count(create_model(name, variant='slim', **options)) == expected


# --- Counts derived by hand from the paper's figures (independent of the model code). ---

def _conv(cin, cout, kh=1, kw=None):
  """Parameters of conv (no bias) + BN beta; returns (params, cout)."""
  return kh * (kw or kh) * cin * cout + cout, cout


def _chain(cin, *layers):
  """A branch: layers (cout, kh, kw) in turn; returns (params, cout)."""
  total = 0
  for cout, kh, kw in layers:
    p, cin = _conv(cin, cout, kh, kw)
    total += p
  return total, cin


def _block(cin, *branches, pool_channels=0, residual=False):
  """Parallel branches (+ a parameter-free pool branch), optional linear 1x1 expansion."""
  params = outs = 0
  for branch in branches:
    p, c = _chain(cin, *branch)
    params, outs = params + p, outs + c
  if residual:
    return params + outs * cin + cin, cin
  return params, outs + pool_channels


def _resnet_v1_by_hand() -> int:
  total, c = _chain(3, (32, 3, 3), (32, 3, 3), (64, 3, 3), (80, 1, 1), (192, 3, 3),
                    (256, 3, 3))                                     # Fig. 14
  a, c = _block(c, [(32, 1, 1)], [(32, 1, 1), (32, 3, 3)],
                [(32, 1, 1), (32, 3, 3), (32, 3, 3)], residual=True)  # Fig. 10
  total += 5 * a
  r, c = _block(c, [(384, 3, 3)], [(192, 1, 1), (192, 3, 3), (256, 3, 3)],
                pool_channels=c)                                     # Fig. 7, k/l/m/n
  total += r
  b, c = _block(c, [(128, 1, 1)], [(128, 1, 1), (128, 1, 7), (128, 7, 1)],
                residual=True)                                       # Fig. 11
  total += 10 * b
  r, c = _block(c, [(256, 1, 1), (384, 3, 3)], [(256, 1, 1), (256, 3, 3)],
                [(256, 1, 1), (256, 3, 3), (256, 3, 3)], pool_channels=c)  # Fig. 12
  total += r
  cc, c = _block(c, [(192, 1, 1)], [(192, 1, 1), (192, 1, 3), (192, 3, 1)],
                 residual=True)                                      # Fig. 13
  total += 5 * cc
  assert c == 1792
  return total + c * 1000 + 1000


def _stem_v4_by_hand() -> tuple[int, int]:
  total, c = _chain(3, (32, 3, 3), (32, 3, 3), (64, 3, 3))           # Fig. 3
  p, c = _block(c, [(96, 3, 3)], pool_channels=c)
  total += p
  p, c = _block(c, [(64, 1, 1), (96, 3, 3)], [(64, 1, 1), (64, 7, 1), (64, 1, 7), (96, 3, 3)])
  total += p
  p, c = _block(c, [(192, 3, 3)], pool_channels=c)
  return total + p, c


def _resnet_v2_paper_by_hand() -> int:
  total, c = _stem_v4_by_hand()
  a, c = _block(c, [(32, 1, 1)], [(32, 1, 1), (32, 3, 3)],
                [(32, 1, 1), (48, 3, 3), (64, 3, 3)], residual=True)  # Fig. 16
  total += 5 * a
  r, c = _block(c, [(384, 3, 3)], [(256, 1, 1), (256, 3, 3), (384, 3, 3)], pool_channels=c)
  total += r
  b, c = _block(c, [(192, 1, 1)], [(128, 1, 1), (160, 1, 7), (192, 7, 1)],
                residual=True)                                       # Fig. 17
  total += 10 * b
  r, c = _block(c, [(256, 1, 1), (384, 3, 3)], [(256, 1, 1), (288, 3, 3)],
                [(256, 1, 1), (288, 3, 3), (320, 3, 3)], pool_channels=c)  # Fig. 18
  total += r
  cc, c = _block(c, [(192, 1, 1)], [(192, 1, 1), (224, 1, 3), (256, 3, 1)],
                 residual=True)                                      # Fig. 19
  total += 5 * cc
  assert c == 2144
  return total + c * 1000 + 1000


@pytest.mark.parametrize('variant', ['paper', 'slim'])
def test_resnet_v1_count_matches_figures(variant):
  count = param_count(create_model('inception_resnet_v1', variant=variant))
  print(f'inception_resnet_v1 ({variant}): {count:,} parameters')
  assert count == _resnet_v1_by_hand()


def test_resnet_v2_paper_count_matches_figures():
  count = param_count(create_model('inception_resnet_v2', variant='paper'))
  print(f'inception_resnet_v2 (paper): {count:,} parameters')
  assert count == _resnet_v2_paper_by_hand()


def test_inception_v4_paper_and_slim_have_the_same_count():
  # The layouts differ only in which of 1x7/7x1 (1x3/3x1) comes first.
  assert (param_count(create_model('inception_v4', variant='paper')) ==
          param_count(create_model('inception_v4', variant='slim')))


EXPECTED_STAGES = {
    ('inception_v3', 'slim'): [
        ('Stem', (35, 35, 192)), ('Mixed_5b', (35, 35, 256)), ('Mixed_5c', (35, 35, 288)),
        ('Mixed_5d', (35, 35, 288)), ('Mixed_6a', (17, 17, 768)), ('Mixed_6b', (17, 17, 768)),
        ('Mixed_6c', (17, 17, 768)), ('Mixed_6d', (17, 17, 768)), ('Mixed_6e', (17, 17, 768)),
        ('Mixed_7a', (8, 8, 1280)), ('Mixed_7b', (8, 8, 2048)), ('Mixed_7c', (8, 8, 2048))],
    ('inception_v4', 'slim'): [
        ('Stem', (35, 35, 384)), ('InceptionA', (35, 35, 384)), ('ReductionA', (17, 17, 1024)),
        ('InceptionB', (17, 17, 1024)), ('ReductionB', (8, 8, 1536)),
        ('InceptionC', (8, 8, 1536))],
    ('inception_resnet_v1', 'slim'): [
        ('Stem', (35, 35, 256)), ('InceptionResNetA', (35, 35, 256)),
        ('ReductionA', (17, 17, 896)), ('InceptionResNetB', (17, 17, 896)),
        ('ReductionB', (8, 8, 1792)), ('InceptionResNetC', (8, 8, 1792))],
    ('inception_resnet_v2', 'paper'): [
        ('Stem', (35, 35, 384)), ('InceptionResNetA', (35, 35, 384)),
        ('ReductionA', (17, 17, 1152)), ('InceptionResNetB', (17, 17, 1152)),
        ('ReductionB', (8, 8, 2144)), ('InceptionResNetC', (8, 8, 2144))],
    ('inception_resnet_v2', 'slim'): [
        ('Stem', (35, 35, 192)), ('Mixed_5b', (35, 35, 320)),
        ('InceptionResNetA', (35, 35, 320)), ('ReductionA', (17, 17, 1088)),
        ('InceptionResNetB', (17, 17, 1088)), ('ReductionB', (8, 8, 2080)),
        ('InceptionResNetC', (8, 8, 2080)), ('Block8', (8, 8, 2080)),
        ('Conv2d_7b_1x1', (8, 8, 1536))],
}
# Where the layouts coincide, the paper layout has the same stages.
for _name in ('inception_v3', 'inception_v4', 'inception_resnet_v1'):
  EXPECTED_STAGES[(_name, 'paper')] = EXPECTED_STAGES[(_name, 'slim')]


@pytest.mark.parametrize('name, variant', sorted(EXPECTED_STAGES))
def test_stage_output_shapes_at_299(name, variant):
  model = create_model(name, variant=variant, bn_scale=True)
  rows = stage_stats(model, 299)
  got = [(r.name, r.output_shape) for r in rows[:-1]]
  assert got == EXPECTED_STAGES[(name, variant)]
  assert sum(r.params for r in rows) == param_count(model)
  assert all(r.flops > 0 for r in rows)
  print(format_table(rows))


def test_summary_flops_of_inception_v3():
  # Inception-v3 is ~5.7 G multiply-adds at 299x299 (v3 paper sec. 7: 5 billion).
  flops = sum(r.flops for r in stage_stats(create_model('inception_v3'), 299))
  assert 10.5e9 < flops < 12.5e9


# --- Behaviour of the options, on narrow networks at the smallest input. ---

TINY = dict(width_multiplier=0.125, num_classes=7)
X = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 75, 75, 3)), jnp.float32)


def _init(model, x=X):
  return jax.jit(lambda k: model.init(k, x))(jax.random.key(0))


def _forward(model, variables, x=X):
  return jax.jit(lambda v: model.apply(v, x))(variables)


def test_use_residual_false_keeps_parameters_and_changes_the_function():
  base = create_model('inception_resnet_v2', repeats=(2, 2, 2), **TINY)
  ablated = create_model('inception_resnet_v2', repeats=(2, 2, 2), use_residual=False, **TINY)
  variables = _init(base)
  assert param_count(base) == param_count(ablated)
  assert jax.tree.structure(variables) == jax.tree.structure(_init(ablated))
  assert not np.allclose(_forward(base, variables), _forward(ablated, variables), atol=1e-5)


def test_residual_scale_changes_output_and_accepts_one_per_grid():
  variables = _init(create_model('inception_resnet_v1', repeats=(1, 1, 1), **TINY))
  outputs = [_forward(create_model('inception_resnet_v1', repeats=(1, 1, 1),
                                   residual_scale=s, **TINY), variables)
             for s in (0.1, 0.3, (0.1, 0.1, 0.3))]
  assert not np.allclose(outputs[0], outputs[1], atol=1e-5)
  assert not np.allclose(outputs[0], outputs[2], atol=1e-5)


def test_width_multiplier_roughly_quarters_the_parameters():
  for name in ('inception_v4', 'inception_resnet_v2'):
    ratio = (param_count(create_model(name, width_multiplier=0.5)) /
             param_count(create_model(name)))
    assert 0.22 < ratio < 0.30, (name, ratio)


def test_repeats_set_the_number_of_blocks():
  full = param_count(create_model('inception_v4', repeats=(4, 7, 3)))
  fewer = param_count(create_model('inception_v4', repeats=(4, 6, 3)))
  # One Inception-B block of Fig. 5 on 1024 channels.
  b = (1024 * 384 + 1024 * 192 + 192 * 224 * 7 + 224 * 256 * 7 + 1024 * 192 + 192 * 192 * 7 +
       192 * 224 * 7 + 224 * 224 * 7 + 224 * 256 * 7 + 1024 * 128 +
       (384 + 192 + 224 + 256 + 192 + 192 + 224 + 224 + 256 + 128))
  assert full - fewer == b


def test_training_returns_aux_logits_and_sows_pre_pool():
  model = create_model('inception_v3', aux_logits=True, **TINY)
  variables = _init(model)
  (logits, aux), state = jax.jit(lambda v: model.apply(
      v, X, train=True, rngs={'dropout': jax.random.key(1)},
      mutable=['batch_stats', 'intermediates']))(variables)
  assert logits.shape == aux.shape == (2, 7)
  assert state['intermediates']['pre_pool'][0].shape == (2, 1, 1, 256)
  assert _forward(model, variables).shape == (2, 7)  # Eval: logits only.


def test_residual_blocks_sow_branch_to_shortcut_ratio():
  model = create_model('inception_resnet_v2', repeats=(1, 1, 1), **TINY)
  _, state = jax.jit(lambda v: model.apply(v, X, mutable=['intermediates']))(_init(model))
  ratio = state['intermediates']['InceptionResNetA_0']['residual_ratio'][0]
  assert ratio.shape == () and 0 < float(ratio) < 10
  a, b = (np.random.RandomState(i).randn(2, 5, 5, 6).astype(np.float32) for i in (0, 1))
  rms = lambda v: np.sqrt(np.mean(np.square(v, dtype=np.float64)))
  np.testing.assert_allclose(blocks._rms_ratio(a, b * 3), rms(a) / rms(b * 3), rtol=1e-6)


@pytest.mark.parametrize('remat', [False, True])
def test_scanned_blocks_equal_unrolled_blocks(remat):
  unrolled = create_model('inception_resnet_v2', repeats=(3, 2, 3), **TINY)
  scanned = create_model('inception_resnet_v2', repeats=(3, 2, 3), scan_blocks=True,
                         remat=remat, **TINY)
  variables = _init(unrolled)
  stacked = {k: stack_repeats(v, unrolled) for k, v in variables.items()}
  assert jax.tree.structure(stacked) == jax.tree.structure(_init(scanned))
  assert param_count(unrolled) == param_count(scanned)
  np.testing.assert_allclose(_forward(scanned, stacked), _forward(unrolled, variables),
                             atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = create_model('inception_v4', repeats=(1, 1, 1), dtype='bfloat16', **TINY)
  variables = _init(model)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  logits = _forward(model, variables)
  reference = _forward(create_model('inception_v4', repeats=(1, 1, 1), **TINY), variables)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.1, rtol=0.1)


def test_conv1x1_as_dot_is_the_same_function():
  model = create_model('inception_resnet_v2', repeats=(1, 1, 1), **TINY)
  variables = _init(model)
  as_conv = create_model('inception_resnet_v2', repeats=(1, 1, 1), conv1x1_as_dot=False, **TINY)
  np.testing.assert_allclose(_forward(model, variables), _forward(as_conv, variables),
                             atol=1e-5)


def test_1x1_weight_gradient_is_one_matmul_without_a_transposed_copy():
  """The 1x1 dot contracts one axis of an (N*H*W, C) view; contracting N, H and W of
  the 4-d arrays made XLA:CPU copy the output gradient transposed first."""
  conv = functools.partial(layers._conv, conv1x1_as_dot=True, backward_nhwc=False)
  x = jnp.ones((2, 6, 6, 8))
  w = jnp.ones((1, 1, 8, 16))
  options = {'xla_cpu_experimental_ynn_fusion_type': ''}  # The Eigen kernels, as on CPU.

  def transposes(f):
    grad = jax.grad(lambda w: jnp.sum(jnp.sin(f(x, w))))
    return jax.jit(grad, compiler_options=options).lower(w).compile().as_text().count(
        ' transpose(')

  assert transposes(lambda x, w: conv(x, w, (1, 1), 'SAME')) == 0
  assert transposes(lambda x, w: jnp.einsum('nhwc,cf->nhwf', x, w[0, 0])) >= 1


@pytest.mark.parametrize('block', [blocks.InceptionResNetA, blocks.InceptionResNetB,
                                   blocks.InceptionA, blocks.InceptionC, blocks.ReductionB])
def test_merged_pointwise_convs_are_the_same_function(block):
  """Parallel branches' opening 1x1 convs computed as one matmul: the same variables, and
  outputs, running statistics and gradients equal to one conv per branch's."""
  merged = block(opts=layers.LayerOptions(width_multiplier=0.25))
  apart = block(opts=layers.LayerOptions(width_multiplier=0.25, merge_pointwise=False))
  channels = 64 if issubclass(block, blocks.ResidualBlock) else 48
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, channels))
  variables = apart.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, merged.init(jax.random.key(1), x), variables)
  weight = jax.random.normal(jax.random.key(2), apart.apply(variables, x).shape)

  def loss(module, params, x):
    y, updates = module.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
    return jnp.sum(y * weight), (y, updates)

  outs = [jax.value_and_grad(loss, (1, 2), has_aux=True)(m, variables['params'], x)
          for m in (merged, apart)]
  (_, got), (_, want) = outs[0][0], outs[1][0]
  for g, w in zip(jax.tree.leaves((got, outs[0][1])), jax.tree.leaves((want, outs[1][1]))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)  # Gradients reach |g| ~ 40.
  # Inference too, to float rounding: the wider matmul adds in another order.
  np.testing.assert_allclose(merged.apply(variables, x), apart.apply(variables, x), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('as_dot', [True, False])
def test_expansion_conv_is_flax_conv_with_bias(as_dot):
  opts = layers.LayerOptions(conv1x1_as_dot=as_dot)
  ours = layers.Conv1x1Bias(6, opts)
  flax_conv = nn.Conv(6, (1, 1), use_bias=True, conv_general_dilated=opts.conv_general_dilated)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  variables = flax_conv.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), variables)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # A nonzero bias.
  np.testing.assert_array_equal(ours.apply(variables, x), flax_conv.apply(variables, x))
  loss = lambda m, v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  got = jax.grad(loss, (1, 2))(ours, variables, x)
  want = jax.grad(loss, (1, 2))(flax_conv, variables, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(3, 5, 7, 4), (2, 3, 4), (6, 4)])
def test_channel_sums_sum_over_every_axis_but_channels(shape):
  a = np.random.RandomState(0).randn(*shape).astype(np.float32)
  axes = tuple(range(len(shape) - 1))
  total, squares = layers.channel_sums(jnp.asarray(a), jnp.asarray(a * a))
  np.testing.assert_allclose(total, a.sum(axes, dtype=np.float64), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(squares, (a * a).sum(axes, dtype=np.float64), rtol=1e-5)
  alone, = layers.channel_sums(jnp.asarray(a))
  np.testing.assert_array_equal(alone, total)


@pytest.mark.parametrize('kernel, strides, padding', [
    ((3, 3), 1, 'VALID'), ((3, 3), 2, 'SAME'), ((7, 1), 1, 'SAME'), ((1, 7), 1, 'SAME'),
    ((5, 5), 2, 'VALID'), ((3, 1), 2, 'SAME'), ((3, 3), 1, 'SAME'),
    ((2, 4), 1, 'SAME')])  # Even kernels: uneven SAME pads in the stride-1 data gradient.
def test_conv_backward_nhwc_matches_xla(kernel, strides, padding):
  conv = functools.partial(layers._conv, conv1x1_as_dot=True, backward_nhwc=True)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 12, 11, 5), jnp.float32)  # Odd sizes: uneven SAME padding.
  w = jnp.asarray(rng.randn(*kernel, 5, 6), jnp.float32)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def loss(f, x, w):
    y = f(x, w, (strides, strides), padding, dimension_numbers=dn)
    return jnp.sum(jnp.sin(y)), y

  (_, ours), ours_grads = jax.value_and_grad(loss, (1, 2), has_aux=True)(conv, x, w)
  (_, ref), ref_grads = jax.value_and_grad(loss, (1, 2), has_aux=True)(
      lax.conv_general_dilated, x, w)
  np.testing.assert_array_equal(ours, ref)  # The forward pass is XLA's own.
  for g, r in zip(ours_grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('use_scale', [False, True])
def test_batch_norm_relu_is_flax_batch_norm_then_relu(use_scale):
  x = jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 3 + 1
  weight = jax.random.normal(jax.random.key(1), x.shape)  # A loss that weighs every output.
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3,
                         use_scale=use_scale)
  ours = layers.BatchNormReLU(False, 0.9, 1e-3, use_scale)
  variables = flax_bn.init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(2), x)) == jax.tree.map(
      jnp.shape, variables)
  # Statistics and parameters away from their initial values.
  variables = jax.tree.map(lambda v: v + 0.3 * jax.random.normal(jax.random.key(3), v.shape),
                           variables)

  def loss(module, variables, x):
    y, updates = module.apply(variables, x, mutable=['batch_stats'])
    y = nn.relu(y) if module is flax_bn else y
    return jnp.sum(y * weight), (y, updates)

  (_, (want, want_stats)), want_grads = jax.value_and_grad(loss, (1, 2), has_aux=True)(
      flax_bn, variables, x)
  (_, (got, got_stats)), got_grads = jax.value_and_grad(loss, (1, 2), has_aux=True)(
      ours, variables, x)
  # Forward values, running statistics and the closed-form gradient equal flax's up to
  # float rounding (the channel sums are added in another order).
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
               got_stats, want_stats)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Inference uses the running statistics.
  np.testing.assert_array_equal(
      layers.BatchNormReLU(True, 0.9, 1e-3, use_scale).apply(variables, x),
      nn.relu(flax_bn.clone(use_running_average=True).apply(variables, x)))


@pytest.mark.parametrize('spec', [layers.MAX_POOL_REDUCE, layers.Pool('max'),
                                  layers.Pool('max', strides=2), layers.IDENTITY_POOL])
def test_max_pool_gradient_matches_xla(spec):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))  # Odd/even sides: uneven SAME pads.
  window, strides = (spec.window,) * 2, (spec.strides,) * 2
  y = nn.max_pool(x, window, strides, spec.padding)
  weight = jax.random.normal(jax.random.key(1), y.shape)
  ours = jax.grad(lambda x: jnp.sum(layers.pool(spec, x) * weight))(x)
  want = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides, spec.padding) * weight))(x)
  np.testing.assert_array_equal(layers.pool(spec, x), y)
  np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6)  # Sums in another order.


def test_max_pool_gradient_goes_to_the_first_maximum():
  # Two equal maxima in one 3x3 window: TF's MaxPoolGrad picks the first in row-major order.
  x = jnp.zeros((1, 3, 3, 1)).at[0, 0, 2, 0].set(1.0).at[0, 2, 0, 0].set(1.0)
  grad = jax.grad(lambda x: jnp.sum(layers.pool(layers.MAX_POOL_REDUCE, x)))(x)
  np.testing.assert_array_equal(grad[0, :, :, 0], [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_each_residual_block_output_is_computed_once():
  """Unrolled, no fusion re-derives a block's output from earlier blocks' expansions.

  Without the kept barrier XLA:CPU fuses a stage's chain of residual sums into every
  consumer, so one loop reads the expansion (the block's last 1x1 conv) of many blocks.
  """
  model = create_model('inception_resnet_v2', repeats=(4, 4, 4), dropout_rate=0.0, **TINY)
  variables = _init(model)

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


def test_conv_backward_nhwc_inside_a_scan_compiles_to_nhwc_convs_only():
  """Inside a scan's loop XLA:CPU keeps jax's transposed gradient convs, which run on its
  generic convolution; written out, every conv of the loop is a forward NHWC/HWIO one."""
  x = jnp.ones((3, 2, 9, 9, 8))
  w = jnp.ones((3, 3, 8, 8))

  def labels(backward_nhwc):
    conv = functools.partial(layers._conv, conv1x1_as_dot=True, backward_nhwc=backward_nhwc)

    def loss(w):
      body = lambda h, x: (conv(x + h, w, (1, 1), 'SAME', dimension_numbers=layers._NHWC), None)
      return jnp.sum(jnp.sin(lax.scan(body, jnp.zeros(x.shape[1:]), x)[0]))
    compiled = jax.jit(jax.grad(loss), compiler_options={
        'xla_cpu_experimental_ynn_fusion_type': ''}).lower(w).compile().as_text()
    return set(re.findall(r'convolution\(.*dim_labels=(\S+?),', compiled))

  assert labels(True) == {'b01f_01io->b01f'}
  # jax's own: the forward conv, and the gradients' transposed ones (b01f_01oi, f01b_i01o).
  assert labels(False) > {'b01f_01io->b01f'}


def test_conv_backward_nhwc_trains_the_same_network():
  kw = dict(repeats=(1, 1, 1), **TINY)
  nhwc = create_model('inception_resnet_v2', conv_backward_nhwc=True, **kw)
  xla = create_model('inception_resnet_v2', conv_backward_nhwc=False, **kw)
  variables = _init(nhwc)

  def grads(model):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, X, train=True,
                              rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
      return jnp.sum(logits ** 2)
    return jax.jit(jax.grad(loss))(variables['params'])

  expected = grads(xla)
  for got, want in zip(jax.tree.leaves(grads(nhwc)), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_cpu_kernels_choose_the_library_not_the_function():
  kw = dict(repeats=(1, 1, 1), **TINY)
  eigen = create_model('inception_resnet_v2', cpu_kernels='eigen', **kw)
  ynnpack = create_model('inception_resnet_v2', cpu_kernels='ynnpack', **kw)
  # 'auto' is Eigen, scanned or not; on CPU every layer, scanned or not, has its conv
  # gradients written out as NHWC convs (inside a scan's loop XLA:CPU keeps jax's own).
  scanned = create_model('inception_resnet_v2', scan_blocks=True, **kw)
  assert create_model('inception_resnet_v2', **kw).resolved_cpu_kernels == 'eigen'
  assert scanned.resolved_cpu_kernels == 'eigen'
  for model in (eigen, ynnpack, scanned):
    assert {dict(s.fields)['opts'].conv_backward_nhwc for s in model.stages()} == {True}
  variables = _init(eigen)
  x = jnp.tile(X, (4, 1, 1, 1))  # Enough rows for XLA to hand the 1x1 dots to YNNPACK.
  outputs, programs = [], []
  for model in (eigen, ynnpack):
    compiled = jax.jit(lambda v, x, model=model: model.apply(v, x),
                       compiler_options=model.compiler_options).lower(variables, x).compile()
    programs.append(compiled.as_text())
    outputs.append(compiled(variables, x))
  assert '__ynn_fusion' not in programs[0] and '__ynn_fusion' in programs[1]
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
  # A scan also compiles with XLA's older loop emitters and LLVM at -O2, with either library;
  # same function.
  scanned = create_model('inception_resnet_v2', scan_blocks=True, **kw)
  scan_options = {'xla_cpu_use_fusion_emitters': False, 'xla_backend_optimization_level': 2}
  assert scanned.compiler_options == {'xla_cpu_experimental_ynn_fusion_type': '',
                                      **scan_options}
  assert create_model('inception_resnet_v2', scan_blocks=True, cpu_kernels='ynnpack',
                      **kw).compiler_options == scan_options
  variables = _init(scanned)
  np.testing.assert_allclose(
      jax.jit(scanned.apply, compiler_options=scanned.compiler_options)(variables, x),
      jax.jit(scanned.apply)(variables, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kwargs, message', [
    (dict(name='inception_v5'), 'valid models: inception_v3, inception_v4'),
    (dict(name='inception_v4', residual_scael=0.1), 'unknown model option(s) residual_scael'),
    (dict(name='inception_v4', variant='keras'), "variant='keras' is invalid"),
    (dict(name='inception_resnet_v2', residual_scale=0.0), 'residual_scale=0.0 must be'),
    (dict(name='inception_resnet_v2', residual_scale=(0.1, 0.2)), 'one float or three'),
    (dict(name='inception_v4', width_multiplier=-1), 'width_multiplier=-1 must be'),
    (dict(name='inception_v3', repeats=(1, 1, 1)), 'repeats cannot be set for inception_v3'),
    (dict(name='inception_v4', repeats=(1, 2)), 'repeats=(1, 2) is invalid'),
    (dict(name='inception_v4', dtype='int8'), "dtype='int8' is invalid"),
    (dict(name='inception_v4', dropout_rate=1.0), 'dropout_rate=1.0 must be'),
    (dict(name='inception_v4', cpu_kernels='mkl'), "cpu_kernels='mkl' is invalid; valid: auto"),
    (dict(name='inception_v4', num_classes=0), 'num_classes=0 must be'),
])
def test_bad_options_raise_clear_errors(kwargs, message):
  with pytest.raises(ValueError) as e:
    create_model(kwargs.pop('name'), **kwargs)
  assert message in str(e.value)


def test_input_below_minimum_size_raises_clear_error():
  model = create_model('inception_v4', **TINY)
  with pytest.raises(ValueError, match='image size 74x74 is below the minimum of 75x75'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 74, 74, 3))))
