"""Tests of the weight importers (inception_jax/convert), with no download.

Keras builds InceptionV3 and InceptionResNetV2 with random weights (random
BatchNorm statistics too, so epsilon and the statistics matter) at 107 px, where
every grid keeps a border for SAME padding and the pools' border counts; its
logits are the reference. Files in timm's and TF-Slim's naming are written from
the same weights: timm's with a random gamma folded into the variance, slim's
with a background class and an auxiliary head. Inception-v4 has no reference
model here: a random file in each naming must import tensor for tensor.

The reference names (tests/reference_names.py) are written out from the references'
sources (TF-Slim nets/, timm models/), independently of the importers' rules.
"""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys

# Keras builds its applications ~3x faster on TensorFlow than on JAX (whose backend
# compiles every initializer); the importer reads the same files with either.
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

# pylint: disable=g-import-not-at-top,wrong-import-position
import pytest

# Keras references and TF-Slim files: the TensorFlow side (requirements.txt).
pytest.importorskip('tensorflow')

import h5py
import jax
import numpy as np
from safetensors.numpy import save_file

from configs import finetune
from inception_jax import parallel, steps, train, validation
from inception_jax.convert import common, convert, load_converted
from inception_jax.models import create_model
from tests.reference_names import slim_names, timm_names
from tests.util import REPO, subprocess_env

# TensorFlow's variables warn when numpy 2 copies them (Keras on its TF backend).
pytestmark = [pytest.mark.tf,
              pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')]

SIZE = 107  # grids 11, 5 and 2 in the three stages
EPS = 1e-3
KERAS_APPS = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}
# Parameter counts measured on the references' own code (SPEC.md).
KERAS_PARAMS = {'inception_v3': 23_817_352, 'inception_resnet_v2': 55_813_192}
TIMM_PARAMS = {'inception_v3': 23_834_568, 'inception_v4': 42_679_816,
               'inception_resnet_v2': 55_843_464}


# --- Writing files in the references' layouts --------------------------------------

def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _named(model, flat, names):
  """[(layer, reference name)] for every layer of `model`, names as `slim_names` give."""
  body, heads = names
  layers = common.model_layers(model, {k: v.shape for k, v in flat.items()})
  body_layers = [l for l in layers if l.path not in common.CLASSIFIERS
                 and not l.path.startswith('AuxLogits/')]
  assert len(body_layers) == len(body)
  named = list(zip(body_layers, body))
  return named + [(l, heads[l.path]) for l in layers if l not in body_layers]


def timm_tensors(model, flat):
  tensors = {}
  for layer, name in _named(model, flat, timm_names(model.arch)):
    p, s = f'params/{layer.path}', f'batch_stats/{layer.path}'
    if layer.kind == 'conv_bn':
      tensors.update({f'{name}.conv.weight': flat[f'{p}/conv/kernel'].transpose(3, 2, 0, 1),
                      f'{name}.bn.weight': flat[f'{p}/bn/scale'],
                      f'{name}.bn.bias': flat[f'{p}/bn/bias'],
                      f'{name}.bn.running_mean': flat[f'{s}/bn/mean'],
                      f'{name}.bn.running_var': flat[f'{s}/bn/var'],
                      f'{name}.bn.num_batches_tracked': np.array(0, np.int64)})
    else:
      kernel = flat[f'{p}/kernel']
      tensors[f'{name}.weight'] = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
      tensors[f'{name}.bias'] = flat[f'{p}/bias']
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def slim_tensors(model, flat):
  scope = {'inception_v3': 'InceptionV3', 'inception_v4': 'InceptionV4',
           'inception_resnet_v2': 'InceptionResnetV2'}[model.arch]
  tensors = {'global_step': np.array(1000, np.int64)}
  for layer, name in _named(model, flat, slim_names(model.arch)):
    p, s, name = f'params/{layer.path}', f'batch_stats/{layer.path}', f'{scope}/{name}'
    if layer.kind == 'conv_bn':
      tensors.update({f'{name}/weights': flat[f'{p}/conv/kernel'],
                      f'{name}/BatchNorm/beta': flat[f'{p}/bn/bias'],
                      f'{name}/BatchNorm/moving_mean': flat[f'{s}/bn/mean'],
                      f'{name}/BatchNorm/moving_variance': flat[f'{s}/bn/var']})
    else:
      kernel = flat[f'{p}/kernel']
      if model.arch == 'inception_v3' and kernel.ndim == 2:  # v3's heads are 1x1 convs
        kernel = kernel[None, None]
      tensors.update({f'{name}/weights': kernel, f'{name}/biases': flat[f'{p}/bias']})
  return tensors


def write(fmt, tensors, path):
  if fmt == 'timm':
    save_file(tensors, path)
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.raw_ops.SaveV2(prefix=path, tensor_names=list(tensors),
                      shape_and_slices=[''] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])
  return path


TENSORS = {'timm': timm_tensors, 'slim': slim_tensors}


def random_variables(model, rng):
  """Random float32 values for every variable of `model`, BatchNorm variances > 0."""
  flat = {}
  for key, leaf in common.model_variables(model).items():
    value = (rng.uniform(0.5, 1.5, leaf.shape) if key.endswith('/var')
             else rng.normal(0, 0.1, leaf.shape))
    flat[key] = value.astype(np.float32)
  return flat


def count(flat, prefix='params/'):
  """The number of values under `prefix`, the auxiliary head left out."""
  return sum(v.size for k, v in flat.items()
             if k.startswith(prefix) and not k.startswith(f'{prefix}AuxLogits/'))


@functools.lru_cache(maxsize=None)
def _apply(model):
  return jax.jit(functools.partial(model.apply, train=False))


def logits(conversion, images):
  return np.asarray(_apply(conversion.model)(conversion.variables, images))


def assert_same_variables(flat, expected):
  assert sorted(flat) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(flat[key], value, err_msg=key)


# --- Keras: the reference ------------------------------------------------------------

@dataclasses.dataclass
class KerasReference:
  arch: str
  directory: str
  images: np.ndarray
  logits: np.ndarray
  conversion: common.Conversion  # of the Keras file


def _keras_random(weight, rng):
  shape = tuple(weight.shape)
  if weight.name == 'kernel':  # He-scaled convs keep activations O(1), a small classifier logits
    fan_in = math.prod(shape[:-1])
    return rng.normal(0, math.sqrt(2 / fan_in) if len(shape) == 4 else 0.5 / math.sqrt(fan_in),
                      shape)
  if weight.name == 'moving_variance':
    return rng.uniform(0.5, 1.5, shape)
  return rng.normal(0, 0.2, shape)  # beta, moving_mean, bias


def write_keras2_h5(model, path):
  """The layout of the Keras 2 files that keras.applications downloads: a group per
  layer, tensors named '<layer>/<weight>:0', layers in the model's order."""
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [layer.name.encode() for layer in model.layers]
    f.attrs['backend'] = b'tensorflow'
    f.attrs['keras_version'] = b'2.1.6'
    for layer in model.layers:
      group = f.create_group(layer.name)
      names = [f'{layer.name}/{w.name}:0' for w in layer.weights]
      group.attrs['weight_names'] = [n.encode() for n in names]
      for name, weight in zip(names, layer.weights):
        group.create_dataset(name, data=weight.numpy())


@pytest.fixture(scope='module', params=sorted(KERAS_APPS))
def keras_ref(request, tmp_path_factory):
  import keras  # pylint: disable=g-import-not-at-top
  arch = request.param
  model = getattr(keras.applications, KERAS_APPS[arch])(
      weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  rng = np.random.default_rng(0)
  for weight in model.weights:
    weight.assign(_keras_random(weight, rng).astype(np.float32))
  images = rng.uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  reference = np.asarray(model(images, training=False))
  directory = tmp_path_factory.mktemp(arch)
  # One of each format: Keras 3's .weights.h5, and the legacy .h5 of the downloads.
  if arch == 'inception_v3':
    path = str(directory / 'keras.weights.h5')
    model.save_weights(path)
  else:
    path = str(directory / 'keras.h5')
    write_keras2_h5(model, path)
  return KerasReference(arch, directory, images, reference, convert('keras', path, arch))


def max_error(conversion, ref, offset=0):
  assert np.std(ref.logits) > 0.5  # so that 1e-4 means something
  return np.abs(logits(conversion, ref.images)[:, offset:] - ref.logits).max()


def test_keras_logits_match(keras_ref):
  conversion = keras_ref.conversion
  assert count(_flat(conversion.variables)) == KERAS_PARAMS[keras_ref.arch]
  assert (conversion.model.bn_scale, conversion.model.aux_logits, conversion.label_offset) == (
      False, False, 0)
  error = max_error(conversion, keras_ref)
  assert error < 1e-4, error


def test_timm_logits_match(keras_ref):
  arch, rng = keras_ref.arch, np.random.default_rng(1)
  flat = _flat(keras_ref.conversion.variables)
  for key in [k for k in flat if k.endswith('/bn/bias')]:
    # gamma g with variance g^2 (v + eps) - eps: the same function as Keras's.
    bn = key[len('params/'):-len('/bias')]
    gamma = rng.uniform(0.5, 1.5, flat[key].shape)
    var = f'batch_stats/{bn}/var'
    flat[f'params/{bn}/scale'] = gamma.astype(np.float32)
    flat[var] = (gamma ** 2 * (flat[var].astype(np.float64) + EPS) - EPS).astype(np.float32)
  tensors = timm_tensors(create_model(arch), flat)
  path = write('timm', tensors, os.path.join(keras_ref.directory, 'timm.safetensors'))
  conversion = convert('timm', path, arch)
  assert_same_variables(_flat(conversion.variables), flat)
  assert count(flat) == TIMM_PARAMS[arch]
  error = max_error(conversion, keras_ref)
  assert error < 1e-4, error


def test_slim_logits_match_with_background_class(keras_ref):
  arch = keras_ref.arch
  model = create_model(arch, aux_logits=True, num_classes=1001)
  flat = random_variables(model, np.random.default_rng(2))  # aux head and background class
  for key, value in _flat(keras_ref.conversion.variables).items():
    if key.startswith('params/Logits/'):
      flat[key][..., 1:] = value
    else:
      flat[key] = value
  path = write('slim', slim_tensors(model, flat), os.path.join(keras_ref.directory, 'slim.ckpt'))

  kept = convert('slim', path, arch)
  assert_same_variables(_flat(kept.variables), flat)
  assert (kept.model.num_classes, kept.model.aux_logits, kept.label_offset) == (1001, True, 1)
  # Every tensor is the Keras conversion's, whose logits are checked above; the
  # 1001-class head with its aux head is run once, on the cheaper network.
  if arch == 'inception_v3':
    error = max_error(kept, keras_ref, offset=1)  # dataset class i is logit i + 1
    assert error < 1e-4, error

  dropped = convert('slim', path, arch, drop_background=True)
  heads = ('params/Logits/', 'params/AuxLogits/Logits/')
  expected = {k: v[..., 1:] if k.startswith(heads) else v for k, v in flat.items()}
  assert_same_variables(_flat(dropped.variables), expected)
  assert (dropped.model.num_classes, dropped.label_offset) == (1000, 0)


# --- Inception-v4: no reference model, every tensor in place --------------------------

@pytest.mark.parametrize('fmt', ['timm', 'slim'])
def test_inception_v4_imports_every_tensor(fmt, tmp_path):
  timm = fmt == 'timm'
  model = create_model('inception_v4', bn_scale=timm, aux_logits=not timm,
                       num_classes=1000 if timm else 1001)
  flat = random_variables(model, np.random.default_rng(3))
  tensors = TENSORS[fmt](model, flat)
  conversion = convert(fmt, write(fmt, tensors, str(tmp_path / 'good')), 'inception_v4')
  assert_same_variables(_flat(conversion.variables), flat)
  # timm's count = ours + the gammas slim lacks - slim's background class (1536 + 1).
  gammas = 0 if timm else count(flat, 'batch_stats/') // 2
  background = 0 if timm else 1537
  assert count(flat) + gammas - background == TIMM_PARAMS['inception_v4']

  if timm:
    missing, extra = 'features.11.branch2.3.conv.weight', 'head.fc.weight'
    misshaped = 'features.19.branch2_3a.bn.running_var'
  else:
    missing = 'InceptionV4/Mixed_6b/Branch_2/Conv2d_0d_7x1/BatchNorm/beta'
    extra = 'InceptionV4/Mixed_6b/Branch_2/Conv2d_0b_7x1/BatchNorm/gamma'
    misshaped = 'InceptionV4/Mixed_7b/Branch_2/Conv2d_0d_1x3/BatchNorm/moving_variance'
  del tensors[missing]
  tensors[extra] = np.ones(3, np.float32)
  tensors[misshaped] = tensors[misshaped][:-1]
  with pytest.raises(ValueError) as error:
    convert(fmt, write(fmt, tensors, str(tmp_path / 'bad')), 'inception_v4')
  message = str(error.value)
  for name in (missing, extra, misshaped):
    assert name in message
  for title in ('1 missing tensors', '1 unexpected tensors', '1 shape mismatches'):
    assert title in message


# --- Padding, errors, the command line, fine-tuning -------------------------------------

def _paddings(jaxpr):
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated' or name.startswith('reduce_window'):
      yield name, tuple(map(tuple, eqn.params['padding']))
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)
      if hasattr(inner, 'eqns'):
        yield from _paddings(inner)


@pytest.mark.parametrize('arch', ['inception_v3', 'inception_v4', 'inception_resnet_v2'])
def test_same_padding_is_symmetric_at_299(arch):
  """TF's SAME pads every conv and pool of the slim layouts on both sides alike, as
  timm's explicit padding does: their weights mean the same thing."""
  model = create_model(arch, aux_logits=True)
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), np.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x)
  pads = list(_paddings(jaxpr.jaxpr))
  assert sum(1 for name, _ in pads if name == 'conv_general_dilated') > 20
  assert sum(1 for _, pad in pads if any(lo > 0 for lo, _ in pad)) > 20  # SAME ones
  assert [p for p in pads if any(lo != hi for lo, hi in p[1])] == []


def test_bad_requests_are_refused(tmp_path):
  path = str(tmp_path / 'notop.h5')
  with h5py.File(path, 'w') as f:
    f.create_dataset('conv2d/conv2d/kernel:0', data=np.zeros((3, 3, 3, 32), np.float32))
  with pytest.raises(ValueError, match='include_top'):
    convert('keras', path, 'inception_v3')
  with pytest.raises(ValueError, match='keras weights exist for inception_v3, '
                     'inception_resnet_v2, not .inception_v4.'):
    convert('keras', path, 'inception_v4')
  with pytest.raises(ValueError, match='unknown source .caffe.'):
    convert('caffe', path, 'inception_v3')
  with pytest.raises(ValueError, match='cannot read .* as safetensors'):
    convert('timm', path, 'inception_v3')


def test_command_line_output_feeds_init_from(tmp_path):
  model = create_model('inception_v3', bn_scale=True)
  flat = random_variables(model, np.random.default_rng(4))
  source = write('timm', timm_tensors(model, flat), str(tmp_path / 'v3.safetensors'))
  out = tmp_path / 'converted'
  result = subprocess.run(
      [sys.executable, '-m', 'inception_jax.convert', '--from=timm', f'--source={source}',
       '--model=inception_v3', f'--out={out}', '--avg_pool_include_pad'],  # as tv_in1k's
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{TIMM_PARAMS["inception_v3"]:,} parameters' in result.stdout
  meta = json.loads((out / 'model.json').read_text())
  assert meta['model']['name'] == 'inception_v3' and meta['model']['bn_scale']
  assert meta['model']['avg_pool_include_pad']
  assert (meta['num_classes'], meta['label_offset']) == (1000, 0)
  loaded, variables, _ = load_converted(str(out))
  assert loaded.bn_scale and loaded.num_classes == 1000 and loaded.avg_pool_include_pad
  assert_same_variables(_flat(variables), flat)

  # Fine-tuning for 10 classes takes every tensor but the classifier's.
  def zero_state(**options):
    shapes = common.model_variables(create_model('inception_v3', num_classes=10, **options))
    fresh = common.unflatten({k: np.zeros(v.shape, v.dtype) for k, v in shapes.items()})
    return steps.TrainState(step=np.zeros((), np.int32), params=fresh['params'],
                            batch_stats=fresh['batch_stats'], opt_state=(),
                            ema_params=fresh['params'], skipped_steps=np.zeros((), np.int32))
  mesh = parallel.create_mesh()
  state = train._load_init_from(zero_state(bn_scale=True), str(out), mesh)
  got = _flat({'params': state.params, 'batch_stats': state.batch_stats})
  assert sorted(got) == sorted(flat)
  for key, value in got.items():
    if key.startswith('params/Logits/'):
      assert value.shape[-1] == 10 and not value.any(), key
    else:
      np.testing.assert_array_equal(value, flat[key], err_msg=key)
  # Without gamma (bn_scale=False) the model would silently lose them: refused.
  with pytest.raises(ValueError, match='bn/scale'):
    train._load_init_from(zero_state(bn_scale=False), str(out), mesh)


def test_finetune_config_needs_converted_weights(tmp_path):
  config = finetune.get_config()
  with pytest.raises(ValueError, match='init_from'):
    validation.validate(config)
  config.init_from = str(tmp_path)
  validation.validate(config)
