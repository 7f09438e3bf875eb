"""Scaling of the residuals and dying networks (paper sec. 3.3), at small scale.

The paper saw Inception-ResNets with more than 1000 filters per block die early in
training unless the residual branches were scaled down by 0.1-0.3: the last layer before
the average pool output only zeros, for good. This sweep trains an Inception-ResNet-v2
(the figures' layout) at width 0.5, whose 8x8-grid residual blocks carry 1072 channels
(576 at 17x17), at a 10x higher learning rate than the paper's, with the residual
branches unscaled (1.0) or scaled by 0.3, 0.2 or 0.1. Training logs the fraction of
zero pre-pool activations and each residual stage's branch/shortcut norm ratio; the
summary marks a run whose pre-pool layer went all zero as DIED.

    python -m experiments.sweep --config=configs/sweeps/activation_scaling.py \
        --workdir=runs/activation_scaling
    python -m experiments.summarize runs/activation_scaling
    python -m experiments.plot_curves runs/activation_scaling \
        --metric=loss,train/pre_pool_zero_fraction,train/residual_ratio/InceptionResNetC \
        --out=scaling.png

Paper-sized, the full Inception-ResNet-v2 (2144 filters at 8x8) on ILSVRC-2012 is
configs/sweeps/residual_scale.py:imagenet.
"""

from configs.sweeps import common

SCALES = (1.0, 0.3, 0.2, 0.1)


def get_config(setting: str | None = None):
  if setting not in (None, 'offline'):
    raise ValueError('activation_scaling is the offline sweep; on ImageNet use '
                     'configs/sweeps/residual_scale.py:imagenet')
  config = common.base_config(setting)
  config.model.variant = 'paper'
  config.model.width_multiplier = 0.5
  config.model.repeats = (1, 1, 3)
  config.image_size = 75
  config.learning_rate = 0.45
  config.num_train_steps = 150
  config.log_every_steps = 10
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 50
  return config


def sweep(setting: str | None = None) -> list[dict]:
  del setting
  return [{'model.residual_scale': s} for s in SCALES]
