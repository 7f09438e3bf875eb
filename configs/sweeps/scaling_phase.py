"""Sec. 3.3 as a phase diagram: learning rate x residual scale (x width, x warm-up) x seed.

The paper: Inception-ResNets with more than ~1000 filters "died" early in training (the
layer before the average pool put out only zeros) unless the residual branches were
scaled by 0.1-0.3 before the addition; a lower learning rate or an extra BatchNorm did not
save them, and a warm-up did not either. Each trial here ends as `trained`, `died` or
`unstable` (`experiments/outcomes.py`); a trial whose network has been dead for
`stop_if_dead_for_steps` steps stops there, and the sweep moves on.

Offline (the default, ~40 minutes on 2 CPU cores): the figures' Inception-ResNet-v2 at
width 0.5 with 1/1/5 blocks (1072 channels at the 8x8 grid, as the paper's 5
Inception-ResNet-C blocks) at 75 px, 300 steps of batch 32 with the paper's recipe (TF
RMSProp, clip 2.0, no warm-up), at learning rates doubling from the paper's 0.045 to
0.36, residual scale 1.0 and 0.1, two seeds each. Then the cells that decide it: scale
1.0 at width 0.25 (every stage below 1000 channels: 536 at 8x8), scale 1.0 with a linear
warm-up over the first 70 steps, and scale 0.3 at the two highest learning rates.

    python -m experiments.sweep --config=configs/sweeps/scaling_phase.py \
        --workdir=runs/scaling_phase --parallel=2
    python -m experiments.summarize runs/scaling_phase --no_cost
    python -m experiments.plot_phase runs/scaling_phase --out=phase.png

On ILSVRC-2012 (`:imagenet`): the figures' full Inception-ResNet-v2 (2144 channels at
8x8) against width 0.4 (858), 299 px, global batch 256, 20 epochs, the same grid:

    python -m experiments.sweep --config=configs/sweeps/scaling_phase.py:imagenet \
        --workdir=runs/scaling_phase_imagenet --config.data_dir=/path/to/tensorflow_datasets
"""

from configs.sweeps import common

LEARNING_RATES = (0.045, 0.09, 0.18, 0.36)  # Doubling from the paper's.
SCALES = (1.0, 0.1)
SEEDS = (0, 1)
# (offline, imagenet): the widest stage above 1000 channels, and every stage below.
WIDE = {'offline': 0.5, 'imagenet': 1.0}
NARROW = {'offline': 0.25, 'imagenet': 0.4}


def get_config(setting: str | None = None):
  setting = setting or 'offline'
  config = common.base_config(setting)
  config.model.variant = 'paper'
  config.model.width_multiplier = WIDE[setting]
  config.model.aux_logits = False
  config.model.residual_scale = (1.0,)  # One scale for every grid.
  if setting == 'imagenet':
    config.model.repeats = ()  # The paper's 5/10/5.
    config.num_epochs = 20.0
    config.stop_if_dead_for_steps = 2_000
    return config
  config.model.repeats = (1, 1, 5)
  config.image_size = 75
  config.num_train_steps = 300
  config.log_every_steps = 10
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 1
  config.stop_if_dead_for_steps = 60
  return config


def _cells(setting: str) -> list[dict]:
  """Every (row, learning rate) cell's overrides but the seed."""
  warmup = 0.5 if setting == 'offline' else 1.0  # 70 of 300 steps; 1 epoch on ImageNet.
  rows = [({'model.residual_scale': s}, LEARNING_RATES) for s in SCALES]
  # Where scale 1.0 starts to die: does it at a narrower width, or with a warm-up; and 0.3.
  rows += [({'model.width_multiplier': NARROW[setting]}, LEARNING_RATES[2:]),
           ({'warmup_epochs': warmup}, LEARNING_RATES[2:]),
           ({'model.residual_scale': 0.3}, LEARNING_RATES[3:])]
  return [{**row, 'learning_rate': lr} for row, lrs in rows for lr in lrs]


def sweep(setting: str | None = None) -> list[dict]:
  setting = setting or 'offline'
  return [{**cell, 'seed': seed} for cell in _cells(setting) for seed in SEEDS]
