"""The recipe's formulas against values worked out by hand, not against the code itself."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')  # For the crop and the training step on real data.

# pylint: disable=g-import-not-at-top,wrong-import-position
from inception_jax import metrics, optim, steps
from inception_jax.data import input_pipeline, preprocessing
from tests.util import tiny_config

pytestmark = pytest.mark.tf


def test_label_smoothing_spreads_epsilon_over_every_class():
  # logits (2, 0, -1), label 0, smoothing 0.1 over 3 classes: targets (0.9 + 0.1/3, 0.1/3, 0.1/3).
  log_z = math.log(math.exp(2) + 1 + math.exp(-1))  # 2.169846
  log_p = [2 - log_z, -log_z, -1 - log_z]
  targets = [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]
  expected = -sum(t * lp for t, lp in zip(targets, log_p))  # 0.336513
  got = steps.cross_entropy(jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0]), 0.1)
  assert float(got[0]) == pytest.approx(expected, rel=1e-6)
  assert expected == pytest.approx(0.336513, abs=1e-6)


def test_aux_loss_is_added_with_its_weight():
  # Main head: uniform over 4 classes, ln 4. Aux head: certain of the wrong class, so its
  # cross-entropy is 10 + ln(1 + 3 e^-10) (label's logit 0, the wrong one's 10).
  labels = jnp.array([1, 1])
  logits = jnp.zeros((2, 4))
  aux = jnp.array([[10.0, 0.0, 0.0, 0.0]] * 2)
  aux_ce = 10 + math.log(1 + 3 * math.exp(-10))
  got = steps.classification_loss(logits, aux, labels, smoothing=0.0, aux_weight=0.4)
  assert float(got) == pytest.approx(math.log(4) + 0.4 * aux_ce, rel=1e-6)
  without = steps.classification_loss(logits, None, labels, smoothing=0.0, aux_weight=0.4)
  assert float(without) == pytest.approx(math.log(4), rel=1e-6)


def test_top1_and_top5_count_the_classes_above_the_label():
  logits = jnp.array([[0., 1., 2., 3., 4., 5., 6., 7.]] * 4 + [[1., 1., 1., 0., 0., 0., 0., 0.]])
  # Labels ranked 1st, 5th (4 classes above), 6th (5 above), and 2nd; a 3-way tie for first.
  labels = jnp.array([7, 3, 2, 6, 0])
  got = metrics.classification_metrics(logits, labels)
  np.testing.assert_array_equal(got['top1_error'], [0, 1, 1, 1, 0])
  np.testing.assert_array_equal(got['top5_error'], [0, 0, 1, 0, 0])


def test_ema_decay_ramps_as_min_of_decay_and_one_plus_t_over_ten_plus_t():
  config = ml_collections.ConfigDict({'ema_decay': 0.9999})
  for t, expected in ((0, 0.1), (1, 2 / 11), (90, 0.91), (10**6, 0.9999)):
    assert float(optim.ema_decay(config, jnp.asarray(t))) == pytest.approx(expected, rel=1e-6)
  ema = optim.update_ema({'w': jnp.array(1.0)}, {'w': jnp.array(0.0)}, jnp.array(0.1))
  assert float(ema['w']) == pytest.approx(0.1)  # decay * ema + (1 - decay) * params


def test_the_first_train_step_moves_the_ema_nine_tenths_of_the_way(tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  info = input_pipeline.get_dataset_info(config)
  model = steps.create_model_from_config(config, info.num_classes)
  tx = optim.create_optimizer(config, optim.create_schedule(config, 25),
                              model.kernel_set.flat_updates)
  state = jax.jit(lambda: steps.create_train_state(model, config, tx))()
  step = jax.jit(functools.partial(steps.train_step, model=model, config=config, tx=tx))
  batch = next(input_pipeline.create_train_iterator(config, local_batch_size=8))
  new, _ = step(state, batch)
  expected = jax.tree.map(lambda p0, p1: 0.1 * p0 + 0.9 * p1, state.params, new.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               new.ema_params, expected)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), new.params,
                                       state.params))
  assert sum(moved) > len(moved) // 2  # A real update, not a fixed point.


def _square_in_the_middle() -> np.ndarray:
  """100 x 80, zero but for the central 50 x 40 at 200: a crop of half of each side."""
  image = np.zeros((100, 80, 3), np.uint8)
  image[25:75, 20:60] = 200
  return image


@pytest.mark.parametrize('fraction,window', [(0.5, (25, 20, 50, 40)), (0.875, (6, 5, 88, 70)),
                                             (1.0, (0, 0, 100, 80))])
def test_eval_crop_fraction_takes_that_fraction_of_each_side(fraction, window):
  got = preprocessing.central_crop_window(tf.constant([100, 80, 3]), fraction)
  assert tuple(int(v) for v in got) == window
  image = preprocessing.preprocess_for_eval(tf.constant(_square_in_the_middle()), 20, fraction)
  image = image.numpy()
  assert image.shape == (20, 20, 3)
  if fraction == 0.5:
    assert (image == 200).all()  # Only the square is left.
  else:
    assert image[0, 0].max() == 0 and image[10, 10].min() == 200
