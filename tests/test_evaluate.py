"""Tests of experiments/evaluate.py, the multi-crop views and the lower-resolution stems."""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')  # Tests of the TensorFlow side (requirements.txt).

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import evaluate
from inception_jax import checkpointing, optim, parallel, steps, train
from inception_jax.data import augment, datasets, input_pipeline, preprocessing
from inception_jax.models import create_model
from tests.util import REPO, subprocess_env, tiny_config

pytestmark = pytest.mark.tf

S = 75  # Crop size of the view tests.
NUM_CLASSES = 10  # offline_shapes


def noise_image(height: int, width: int) -> np.ndarray:
  """Every pixel differs, so equal crops can only come from the same position."""
  return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- Views ----------------------------------------------------------------------

@pytest.mark.parametrize('crops', datasets.CROP_COUNTS)
def test_view_counts(crops):
  for image in (noise_image(100, 130), tf.io.encode_jpeg(noise_image(130, 100))):
    views = preprocessing.eval_views(image, crops, S).numpy()
    assert views.shape == (crops, S, S, 3) and views.dtype == np.uint8
    assert views.min() < views.max()


def test_views_are_the_expected_crops():
  # Shorter side 86 = round(75 * 256 / 224): at the first scale no resize happens.
  image = noise_image(86, 120)
  ten = preprocessing.eval_views(image, 10, S).numpy()
  np.testing.assert_array_equal(ten[4], image[5:80, 22:97])  # centre
  np.testing.assert_array_equal(ten[5 + 1], image[:75, 45:][:, ::-1])  # mirrored top-right

  twelve = preprocessing.eval_views(image, 12, S).numpy()
  square = image[:, 17:103]  # the central square
  np.testing.assert_array_equal(twelve[4], ten[4])
  np.testing.assert_array_equal(twelve[6 + 2], square[11:, :75][:, ::-1])  # bottom-left
  resized = tf.image.resize(square, [S, S]).numpy()
  np.testing.assert_array_equal(twelve[5], np.round(np.clip(resized, 0, 255)).astype(np.uint8))

  all_views = preprocessing.eval_views(image, 144, S).numpy()
  # Scale 256, centre square = the 12 views; mirrors follow all 72 views.
  np.testing.assert_array_equal(all_views[6:12], twelve[:6])
  np.testing.assert_array_equal(all_views[72 + 6:72 + 12], twelve[6:])
  np.testing.assert_array_equal(all_views[0], image[:75, :75])  # left square, top-left
  assert not np.array_equal(all_views[18], all_views[0])  # next scale

  one = preprocessing.eval_views(image, 1, S).numpy()
  np.testing.assert_array_equal(one[0], preprocessing.preprocess_for_eval(image, S).numpy())


def test_bad_crop_count_is_refused():
  with pytest.raises(ValueError, match=r'crops=5 is invalid; valid: 1, 10, 12, 144'):
    preprocessing.eval_views(noise_image(90, 90), 5, S)


# --- Evaluation of runs and weights ---------------------------------------------

def write_run(workdir: str, config) -> steps.TrainState:
  """A run directory holding an initialised state (EMA set apart from the params)."""
  model = steps.create_model_from_config(config, NUM_CLASSES)
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1),
                              model.kernel_set.flat_updates)
  state = jax.jit(functools.partial(steps.create_train_state, model, config, tx))()
  state = state.replace(step=jnp.asarray(3, jnp.int32),
                        ema_params=jax.tree.map(lambda p: 0.5 * p, state.params))
  os.makedirs(workdir)
  train.write_config(config, workdir)
  checkpoints = checkpointing.RunCheckpoints(os.path.join(workdir, 'checkpoints'), every_steps=1)
  checkpoints.save(3, state, force=True)
  checkpoints.close()
  return state


def write_weights(directory: str) -> None:
  """Converted-style weights of a tiny Inception-ResNet-v2 at 80 px with a background class."""
  spec = {'model': {'name': 'inception_resnet_v2', 'width_multiplier': 0.125,
                    'repeats': [1, 1, 1]},
          'num_classes': NUM_CLASSES + 1, 'label_offset': 1, 'image_size': 80}
  options = dict(spec['model'])
  model = create_model(options.pop('name'), num_classes=spec['num_classes'], **options)
  variables = jax.jit(lambda: model.init(jax.random.key(1), jnp.zeros((1, 80, 80, 3))))()
  checkpointing.save_variables(os.path.join(directory, 'variables'), variables)
  with open(os.path.join(directory, 'model.json'), 'w') as f:
    json.dump(spec, f)


@pytest.fixture(scope='module')
def mesh():
  return parallel.create_mesh(jax.local_devices())


@pytest.fixture(scope='module')
def run(tmp_path_factory, tiny_data_dir):
  """(workdir, config, state) of a tiny Inception-ResNet-v1 run at 75 px."""
  config = tiny_config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp('eval') / 'run')
  return workdir, config, write_run(workdir, config)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('weights'))
  write_weights(directory)
  return directory


@pytest.fixture(scope='module')
def ten_crops(run, weights, mesh):
  """10-crop probabilities of the run and of the weights on the first 8 test examples."""
  data = evaluate.data_config(evaluate.load_config(run[0]), num_examples=8)
  members = [evaluate.load_run(run[0], NUM_CLASSES, mesh), evaluate.load_weights(weights, mesh)]
  return members, data, [evaluate.predict(m, data, NUM_CLASSES, mesh, crops=10, batch_size=8)
                         for m in members]


def test_single_crop_equals_the_training_eval(run, mesh):
  workdir, config, state = run
  model = steps.create_model_from_config(config, NUM_CLASSES)
  state = parallel.replicate(state, mesh)
  eval_step = jax.jit(functools.partial(steps.eval_step, model=model))
  num = config.steps_per_eval * config.eval_batch_size  # 16 examples
  expected = train.evaluate(state, eval_step, config, mesh, num)

  data = evaluate.data_config(evaluate.load_config(workdir), num_examples=num)
  for ema, prefix in ((False, 'eval/'), (True, 'eval/ema_')):
    member = evaluate.load_run(workdir, NUM_CLASSES, mesh, ema=ema)
    assert member.name == f'{workdir}@3' + (' (EMA)' if ema else '')
    result = evaluate.evaluate([member], data, mesh, crops=1, batch_size=8)
    assert result['num_examples'] == num
    assert result['top1_error'] == pytest.approx(expected[prefix + 'top1_error'])
    assert result['top5_error'] == pytest.approx(expected[prefix + 'top5_error'])

  # The same probabilities as the model on training's eval batches.
  probs, labels = evaluate.predict(member, data, NUM_CLASSES, mesh, crops=1, batch_size=8)
  batches = input_pipeline.create_eval_iterator(data, local_batch_size=num)
  batch = next(batches)
  logits = model.apply({'params': state.ema_params, 'batch_stats': state.batch_stats},
                       augment.to_signed_unit_range(batch['image']), train=False)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-5)
  np.testing.assert_array_equal(labels, batch['label'])
  assert len(set(probs.argmax(axis=1))) > 1  # The model does not predict one class only.


def test_ensemble_of_a_run_with_itself_equals_the_run(run, mesh):
  data = evaluate.data_config(evaluate.load_config(run[0]), num_examples=8)
  member = evaluate.load_run(run[0], NUM_CLASSES, mesh)
  single = evaluate.evaluate([member], data, mesh, crops=1, batch_size=8)
  double = evaluate.evaluate([member, member], data, mesh, crops=1, batch_size=8)
  for key in ('top1_error', 'top5_error', 'num_examples'):
    assert double[key] == single[key]
  assert [m['top1_error'] for m in double['models']] == [single['top1_error']] * 2


def test_ensemble_of_two_architectures_averages_their_softmax(ten_crops, mesh):
  members, data, ((probs_a, labels), (probs_b, labels_b)) = ten_crops
  np.testing.assert_array_equal(labels, labels_b)
  np.testing.assert_allclose(probs_b.sum(axis=1), 1.0, atol=1e-5)  # background logit dropped

  # Weights with a background class: dataset class i is logit i + 1, at their own 80 px.
  weights = members[1]
  config = data.copy_and_resolve_references()
  config.image_size = 80
  batch = next(input_pipeline.create_multicrop_eval_iterator(config, crops=10,
                                                             local_batch_size=8))
  assert batch['image'].shape == (8, 10, 80, 80, 3)
  images = augment.to_signed_unit_range(batch['image'].reshape(80, 80, 80, 3))
  logits = jax.jit(weights.model.apply)(weights.variables, images)
  expected = jax.nn.softmax(logits[:, 1:]).reshape(8, 10, NUM_CLASSES).mean(axis=1)
  np.testing.assert_allclose(probs_b, expected, atol=1e-5)

  result = evaluate.evaluate(members, data, mesh, crops=10, batch_size=8)
  assert result['crops'] == 10 and result['num_examples'] == 8
  ensemble = evaluate.errors((probs_a + probs_b) / 2, labels)
  assert result['top1_error'] == pytest.approx(ensemble['top1_error'])
  assert result['top5_error'] == pytest.approx(ensemble['top5_error'])
  assert [m['image_size'] for m in result['models']] == [75, 80]


def test_command_line_ten_crops(run, ten_crops, tmp_path):
  output = tmp_path / 'result.json'
  command = [sys.executable, '-m', 'experiments.evaluate', f'--workdir={run[0]}', '--crops=10',
             '--num_examples=8', '--batch_size=8', f'--json={output}']
  env = subprocess_env(4, JAX_DISABLE_MOST_OPTIMIZATIONS='1',
                       JAX_COMPILATION_CACHE_DIR=os.path.join(REPO, '.jax_cache'))
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '8 examples, 10 crop(s)' in done.stdout
  result = json.loads(output.read_text())
  probs, labels = ten_crops[2][0]
  assert result['top1_error'] == pytest.approx(evaluate.errors(probs, labels)['top1_error'])
  assert result['models'][0]['name'] == f'{run[0]}@3'


def test_two_processes_split_the_examples_and_add_up_exact_counts(run, weights, ten_crops,
                                                                  tmp_path):
  """An ensemble of the run and the weights, 10 crops, over 2 processes x 2 devices on
  127.0.0.1: each reads half the examples; the counts add up to one process's result."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  command = [sys.executable, '-m', 'experiments.evaluate', f'--workdir={run[0]}',
             f'--weights={weights}', '--crops=10', '--num_examples=8', '--batch_size=8']
  procs = []
  for i in range(2):
    env = subprocess_env(2, JAX_DISABLE_MOST_OPTIMIZATIONS='1',
                         JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                         JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(command + [f'--json={tmp_path / f"p{i}.json"}'], cwd=REPO,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
  assert not (tmp_path / 'p1.json').exists()  # Process 0 reports.
  result = json.loads((tmp_path / 'p0.json').read_text())
  members, data, predictions = ten_crops
  expected = evaluate.evaluate(members, data, parallel.create_mesh(), crops=10, batch_size=8)
  assert result['num_examples'] == expected['num_examples'] == 8
  for key in ('top1_error', 'top5_error'):
    assert result[key] == expected[key]  # Exact: counts, not averages of averages.
    assert [m[key] for m in result['models']] == [m[key] for m in expected['models']]


def test_bad_runs_and_weights_are_refused(tmp_path, mesh, tiny_data_dir):
  with pytest.raises(ValueError, match=r'is not a run directory: it has no config.json'):
    evaluate.load_run(str(tmp_path), NUM_CLASSES, mesh)
  train.write_config(tiny_config(tiny_data_dir), str(tmp_path))
  with pytest.raises(ValueError, match=r'holds no checkpoint'):
    evaluate.load_run(str(tmp_path), NUM_CLASSES, mesh)
  with pytest.raises(ValueError, match=r'holds no model.json'):
    evaluate.load_weights(str(tmp_path), mesh)
  with pytest.raises(ValueError, match=r'num_examples=5 is invalid with split .test\[:8\]'):
    evaluate.data_config(split='test[:8]', num_examples=5)


# --- Lower-resolution study (v3 paper sec. 9) ----------------------------------

@pytest.mark.parametrize('name,options', [
    ('inception_v3', {}),
    ('inception_resnet_v1', {'variant': 'paper', 'repeats': (1, 1, 1)}),
])
def test_low_resolution_stems_keep_parameters_and_grids(name, options):
  params, grids = set(), {}
  for size, stride, pool in ((299, 2, True), (151, 1, True), (79, 1, False)):
    model = create_model(name, num_classes=10, width_multiplier=0.125, stem_stride=stride,
                         stem_pool=pool, **options)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda y, m=model: m.init(jax.random.key(0), y, capture_intermediates=True,
                                  mutable=True), x)
    params.add(sum(np.prod(p.shape) for p in jax.tree.leaves(variables['params'])))
    found = variables['intermediates']
    grids[size] = (found['Stem']['__call__'][0].shape[1], found['pre_pool'][0].shape[1])
  assert len(params) == 1
  assert grids == {299: (35, 8), 151: (35, 8), 79: (36, 8)}


def test_low_resolution_options_are_checked():
  with pytest.raises(ValueError, match=r'stem_stride=3 is invalid; valid: 1, 2'):
    create_model('inception_v3', stem_stride=3)
  with pytest.raises(ValueError, match=r'stem_pool=False is invalid for inception_v4'):
    create_model('inception_v4', stem_pool=False)


def test_low_resolution_sweep_configs_are_valid():
  from configs.sweeps import low_resolution  # pylint: disable=g-import-not-at-top
  from inception_jax import validation  # pylint: disable=g-import-not-at-top
  settings = []
  for overrides in low_resolution.sweep():
    config = low_resolution.get_config()
    config.image_size = overrides['image_size']
    config.model.stem_stride = overrides['model.stem_stride']
    config.model.stem_pool = overrides['model.stem_pool']
    validation.validate(config)
    settings.append((config.image_size, config.model.stem_stride, config.model.stem_pool))
  assert settings == [(299, 2, True), (151, 1, True), (79, 1, False)]
