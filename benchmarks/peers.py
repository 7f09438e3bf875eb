"""The peers `step_time.py` times beside ours: Keras 3 on JAX and timm on PyTorch.

The same networks (slim layout, no auxiliary head, full width, float32) with the
same optimizer settings, each in `step_time.py`'s workers.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import median_seconds

# Keras applications and timm models with the same network (slim layout, no auxiliary head).
KERAS_MODELS = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}
TIMM_MODELS = ('inception_v3', 'inception_v4', 'inception_resnet_v2')  # timm's names are ours.
# PyTorch and timm are not in requirements.txt (several GB): --compare_timm asks for them,
# in this venv or (--timm_python) another one.
TIMM_INSTALL = 'pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31'


def _peer_applies(setting: Any, args: Any) -> bool:
  """The peers have only the full-width float32 slim networks."""
  return (setting.width_multiplier == 1.0 and setting.dtype == 'float32' and
          args.variant == 'slim')


def measure_keras(setting: Any, args: Any) -> dict[str, Any]:
  """The same network in Keras 3 on the JAX backend: first train step, train and predict."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np
  if keras.backend.backend() != 'jax':
    raise ValueError(f'Keras runs on {keras.backend.backend()!r}; set KERAS_BACKEND=jax')
  if not _peer_applies(setting, args):
    return {}
  build = getattr(keras.applications, KERAS_MODELS[setting.model])
  net = build(weights=None, input_shape=(setting.image_size, setting.image_size, 3),
              classes=args.num_classes, classifier_activation=None)
  net.compile(optimizer=keras.optimizers.RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.RandomState(0)
  x = rng.uniform(-1, 1, (setting.batch, setting.image_size, setting.image_size, 3)).astype(
      np.float32)
  y = rng.randint(0, args.num_classes, setting.batch).astype(np.int32)
  start = time.perf_counter()
  net.train_on_batch(x, y)  # Returns host values: the step has finished.
  first_step_s = time.perf_counter() - start
  for _ in range(args.warmup):
    net.train_on_batch(x, y)
  train_s = median_seconds(lambda: net.train_on_batch(x, y), args.steps)
  for _ in range(args.warmup + 1):
    net.predict_on_batch(x)
  infer_s = median_seconds(lambda: net.predict_on_batch(x), args.steps)
  return {'keras_params': int(net.count_params()),
          'keras_first_step_s': round(first_step_s, 2),
          'keras_train_img_s': round(setting.batch / train_s, 3),
          'keras_infer_img_s': round(setting.batch / infer_s, 3)}


def measure_timm(setting: Any, args: Any) -> dict[str, Any]:
  """The same network in timm on PyTorch (eager, its default threads): train and eval.

  Runs in a worker of its own (`--timm_python`, which needs neither JAX nor this
  repo's requirements): torchvision crashes on import in a process that has run our
  steps and Keras's.

  The train step is forward, label-smoothed cross-entropy, backward and RMSProp with
  momentum: less than ours, which also clips, decays weights and updates an EMA.
  """
  if not _peer_applies(setting, args):
    return {}
  import timm  # pylint: disable=g-import-not-at-top
  import torch
  net = timm.create_model(setting.model, num_classes=args.num_classes)
  opt = torch.optim.RMSprop(net.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
  gen = torch.Generator().manual_seed(0)
  x = torch.rand((setting.batch, 3, setting.image_size, setting.image_size), generator=gen) * 2 - 1
  y = torch.randint(0, args.num_classes, (setting.batch,), generator=gen)

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1)
    loss.backward()
    opt.step()  # Eager: every kernel has finished when this returns.

  net.train()
  start = time.perf_counter()
  train_step()
  first_step_s = time.perf_counter() - start
  for _ in range(args.warmup):
    train_step()
  train_s = median_seconds(train_step, args.steps)
  net.eval()
  with torch.inference_mode():
    for _ in range(args.warmup + 1):
      net(x)
    infer_s = median_seconds(lambda: net(x), args.steps)
  return {'timm_params': sum(p.numel() for p in net.parameters()),
          'timm_first_step_s': round(first_step_s, 2),
          'timm_train_img_s': round(setting.batch / train_s, 3),
          'timm_infer_img_s': round(setting.batch / infer_s, 3),
          'timm_threads': torch.get_num_threads(), 'torch': torch.__version__}
