"""The model zoo: exact parameter counts, stage shapes, options and their errors.

Full-size networks are only traced (`jax.eval_shape`, lowering); anything that
runs uses narrow widths at the minimum input size.
"""

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import ops, parallel
from inception_jax.models import blocks, create_model, layers, stack_repeats, upgrade_options
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
  # () and, as a saved config.json has it, [] are the paper's counts: Inception-v3 takes them.
  v3 = param_count(create_model('inception_v3'))
  assert param_count(create_model('inception_v3', repeats=[])) == v3
  assert param_count(create_model('inception_v4', repeats=())) == full


def test_training_returns_aux_logits_and_sows_pre_pool():
  model = create_model('inception_v3', aux_logits=True, **TINY)
  variables = _init(model)
  (logits, aux), state = jax.jit(lambda v: model.apply(
      v, X, train=True, rngs={'dropout': jax.random.key(1)},
      mutable=['batch_stats', 'intermediates']))(variables)
  assert logits.shape == aux.shape == (2, 7)
  assert state['intermediates']['pre_pool'][0].shape == (2, 1, 1, 256)
  assert _forward(model, variables).shape == (2, 7)  # Eval: logits only.


def test_residual_blocks_sow_their_monitor():
  model = create_model('inception_resnet_v2', repeats=(1, 1, 1), **TINY)
  _, state = jax.jit(lambda v: model.apply(v, X, mutable=['intermediates']))(_init(model))
  sown = state['intermediates']['InceptionResNetA_0']
  assert set(sown) == {'shortcut_rms', 'branch_rms', 'dead_channels'}
  assert all(v[0].shape == () for v in sown.values())
  assert 0 < float(sown['branch_rms'][0]) < 10 and 0 < float(sown['shortcut_rms'][0]) < 10
  # By hand: the branch unscaled, the shortcut, and the channels with no positive value.
  branch, shortcut = (np.random.RandomState(i).randn(2, 5, 5, 6).astype(np.float32)
                      for i in (0, 1))
  out = np.maximum(shortcut + 0.1 * branch, 0)
  out[..., :2] = 0.0  # Two of six channels dead.
  rms = lambda v: np.sqrt(np.mean(np.square(v, dtype=np.float64)))
  for kernels in (ops.Reference(), ops.XlaCpu()):
    stats = blocks.residual_stats(shortcut * 3, branch, out, kernels)
    np.testing.assert_allclose(stats['branch_rms'], rms(branch), rtol=1e-6)
    np.testing.assert_allclose(stats['shortcut_rms'], rms(shortcut * 3), rtol=1e-6)
    assert float(stats['dead_channels']) == pytest.approx(2 / 6)
    assert 'shortcut_rms' not in blocks.residual_stats(None, branch, out, kernels)


@pytest.mark.parametrize('kernels, remat', [('xla_cpu', False), ('xla_cpu', True),
                                            ('reference', False)])
def test_scanned_blocks_equal_unrolled_blocks(kernels, remat):
  # The reference set's scan keeps only part of what autodiff saves (its `scan_policy`):
  # the gradients must not change.
  kw = dict(repeats=(3, 2, 3), kernels=kernels, dropout_rate=0.0, **TINY)
  unrolled = create_model('inception_resnet_v2', **kw)
  scanned = create_model('inception_resnet_v2', scan_blocks=True, remat=remat, **kw)
  variables = _init(unrolled)
  stacked = {k: stack_repeats(v, unrolled) for k, v in variables.items()}
  assert jax.tree.structure(stacked) == jax.tree.structure(_init(scanned))
  assert param_count(unrolled) == param_count(scanned)
  np.testing.assert_allclose(_forward(scanned, stacked), _forward(unrolled, variables),
                             atol=1e-5)
  # In training, in float64: BatchNorm over two images amplifies float32 rounding.
  with jax.enable_x64(True):
    as64 = lambda tree: jax.tree.map(lambda v: v.astype(jnp.float64), tree)
    x = X.astype(jnp.float64)
    (_, (logits, _)), grads = _train_step(scanned.clone(dtype=jnp.float64), as64(stacked), x)
    (_, (ref_logits, _)), ref_grads = _train_step(unrolled.clone(dtype=jnp.float64),
                                                  as64(variables), x)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-8, atol=1e-8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
               grads, stack_repeats(ref_grads, unrolled))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = create_model('inception_v4', repeats=(1, 1, 1), dtype='bfloat16', **TINY)
  variables = _init(model)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  logits = _forward(model, variables)
  reference = _forward(create_model('inception_v4', repeats=(1, 1, 1), **TINY), variables)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.1, rtol=0.1)


@pytest.mark.parametrize('kernels', ['xla_cpu', 'xla_tpu'])
@pytest.mark.parametrize('name', ['inception_v3', 'inception_v4', 'inception_resnet_v1',
                                  'inception_resnet_v2'])
def test_kernel_sets_compute_the_same_network(name, kernels):
  """Outputs, gradients and running statistics of a training step: a set and the reference.

  In float64: training-mode BatchNorm over a few images at a 1x1 grid amplifies float32
  rounding by 1e3-1e4 (the reference set itself moves by 1% between XLA's optimization
  levels), which would hide a wrong rule; in float64 the two sets agree to 1e-8.
  """
  kw = dict(dropout_rate=0.0, aux_logits=name != 'inception_resnet_v1', **TINY)
  if name != 'inception_v3':
    kw['repeats'] = (1, 1, 1)
  with jax.enable_x64(True):
    models = [create_model(name, kernels=k, **kw).clone(dtype=jnp.float64)
              for k in ('reference', kernels)]
    x = jnp.tile(X, (2, 1, 1, 1)).astype(jnp.float64)
    variables = _init(models[0], x)
    jax.tree.map(np.testing.assert_array_equal, _init(models[1], x), variables)
    (_, (ref_logits, ref_stats)), ref_grads = _train_step(models[0], variables, x)
    (_, (cpu_logits, cpu_stats)), cpu_grads = _train_step(models[1], variables, x)
  np.testing.assert_allclose(cpu_logits, ref_logits, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               cpu_stats, ref_stats)
  ref_flat, cpu_flat = (jax.flatten_util.ravel_pytree(g)[0] for g in (ref_grads, cpu_grads))
  assert float(jnp.linalg.norm(cpu_flat - ref_flat) / jnp.linalg.norm(ref_flat)) < 1e-6
  for a, b in zip(jax.tree.leaves(cpu_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(ref_flat))))


def _train_step(model, variables, x):
  """(loss, (logits, batch stats)), gradients of a loss on every output, in training."""
  def loss(params):
    outputs, updates = model.apply({**variables, 'params': params}, x, train=True,
                                   mutable=['batch_stats'])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(jnp.sum(jnp.sin(o)) for o in outputs), (outputs[0], updates)
  return jax.jit(jax.value_and_grad(loss, has_aux=True),
                 compiler_options=model.compiler_options)(variables['params'])


def test_options_of_earlier_versions_still_build_the_network():
  """A run directory or config from before `model.kernels` names the CPU switches."""
  old = dict(name='inception_v4', conv1x1_as_dot=True, conv_backward_nhwc=None,
             cpu_kernels='ynnpack', repeats=(1, 1, 1))
  options = upgrade_options(old)
  assert options == dict(name='inception_v4', cpu_conv_library='ynnpack', repeats=(1, 1, 1))
  assert upgrade_options(dict(cpu_kernels='auto')) == {}
  assert create_model(options.pop('name'), **options).cpu_conv_library == 'ynnpack'


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
    (dict(name='inception_v4', kernels='mkl'), "kernels='mkl' is invalid; valid: auto, reference"),
    (dict(name='inception_v4', cpu_conv_library='mkl'), "cpu_conv_library='mkl' is invalid"),
    (dict(name='inception_v4', bn_group_size=-8), 'bn_group_size=-8 is invalid'),
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


def test_avg_pool_include_pad_counts_the_zero_padding():
  """torchvision's 3x3 average pools (timm's inception_v3.tv_in1k weights) divide by 9 at
  the borders too; TF-Slim's by the window's pixels inside the image."""
  ones = jnp.ones((1, 4, 4, 1))
  tf_style = layers.pool(layers.AVG_POOL, ones, layers.LayerOptions())
  torch_style = layers.pool(layers.AVG_POOL, ones, layers.LayerOptions(avg_pool_include_pad=True))
  np.testing.assert_allclose(tf_style[0, :, :, 0], np.ones((4, 4)))
  np.testing.assert_allclose(torch_style[0, :, :, 0], [[4 / 9, 6 / 9, 6 / 9, 4 / 9],
                                                       [6 / 9, 1, 1, 6 / 9],
                                                       [6 / 9, 1, 1, 6 / 9],
                                                       [4 / 9, 6 / 9, 6 / 9, 4 / 9]], rtol=1e-6)
  model = create_model('inception_v3', **TINY)
  padded = create_model('inception_v3', avg_pool_include_pad=True, **TINY)
  variables = _init(model)
  assert jax.tree.structure(variables) == jax.tree.structure(_init(padded))
  assert not np.allclose(_forward(model, variables), _forward(padded, variables), atol=1e-5)


def _bn_group_case():
  """A tiny IR-v2 with BatchNorm groups of 2 and one without, 8 images sharded over 4 devices."""
  kw = dict(repeats=(1, 1, 1), dropout_rate=0.0, **TINY)
  grouped = create_model('inception_resnet_v2', bn_group_size=2, **kw)
  whole = create_model('inception_resnet_v2', **kw)
  x = jnp.tile(X, (4, 1, 1, 1)) * jnp.arange(1, 9)[:, None, None, None] / 8  # 8 images
  mesh = parallel.create_mesh()
  train = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=['batch_stats']),
                            in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)))
  return grouped, whole, x, _init(whole, x), train, jax.device_put(x, parallel.batch_sharded(mesh))


def test_bn_groups_of_the_per_device_batch_are_per_device_statistics():
  """bn_group_size = images per device: each device normalizes its own images."""
  grouped, whole, x, variables, train, sharded = _bn_group_case()
  # Each device's 2 images alone, through the network with global statistics.
  alone = jax.jit(lambda v, x: whole.apply(v, x, train=True, mutable=['batch_stats']))
  parts = [alone(variables, x[i:i + 2]) for i in range(0, 8, 2)]
  logits, stats = train(grouped)(variables, sharded)
  np.testing.assert_allclose(logits, jnp.concatenate([p[0] for p in parts]), rtol=1e-4,
                             atol=1e-5)
  mean_stats = jax.tree.map(lambda *s: sum(s) / 4, *[p[1] for p in parts])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats,
               mean_stats)


@pytest.mark.perf
def test_bn_groups_leave_one_all_reduce_in_the_forward_pass():
  grouped, whole, _, variables, train, sharded = _bn_group_case()

  def all_reduces(model):
    hlo = train(model).lower(variables, sharded).compile().as_text()
    return hlo.count('all-reduce(') + hlo.count('all-reduce-start(')
  # The running averages' mean over the groups is the one collective left: XLA combines
  # every layer's into one all-reduce of a few KB. Without groups, one or two per layer.
  assert all_reduces(grouped) == 1
  assert all_reduces(whole) > 20



def _grad_temporaries(model, batch: int = 8) -> int:
  """XLA's temporary bytes for the parameter gradient of a training forward pass."""
  x = jax.ShapeDtypeStruct((batch, 75, 75, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 75, 75, 3))))

  def loss(params, batch_stats, x):
    out, _ = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                         rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32))
  compiled = jax.jit(jax.grad(loss)).lower(variables['params'], variables['batch_stats'],
                                            x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.perf
def test_scanned_blocks_keep_no_more_for_the_backward_pass_than_unrolled():
  """The reference set's scan keeps conv outputs and batch statistics (`scan_policy`).

  Autodiff of its BatchNorm saves float32 copies of each activation; unrolled, XLA fuses
  them away, but a scan stacks them for every block (on a v5e chip, full IR-v2: 20.4 GB
  of temporaries against 7.2 GB unrolled).
  """
  kw = dict(repeats=(4, 4, 4), dtype='bfloat16', kernels='reference', width_multiplier=0.25,
            num_classes=7)
  unrolled = _grad_temporaries(create_model('inception_resnet_v2', **kw))
  scanned = _grad_temporaries(create_model('inception_resnet_v2', scan_blocks=True, **kw))
  assert scanned <= unrolled, (scanned, unrolled)


@pytest.mark.perf
def test_scanned_blocks_keep_no_average_pool_of_xla_tpu():
  """`xla_tpu`'s average pools are grouped convs, which the scan policy recomputes as a pool
  is: Inception-v4's scanned A/B/C blocks (each with a pool) keep no more than the
  reference set's (measured: 15.3 MB against 14.3 MB when the pools' outputs were kept)."""
  kw = dict(repeats=(4, 4, 4), dtype='bfloat16', width_multiplier=0.25, num_classes=7,
            scan_blocks=True)
  ours = _grad_temporaries(create_model('inception_v4', kernels='xla_tpu', **kw))
  reference = _grad_temporaries(create_model('inception_v4', kernels='reference', **kw))
  assert ours <= reference, (ours, reference)
