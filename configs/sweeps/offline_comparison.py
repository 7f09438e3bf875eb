"""The paper's main comparison, CPU-sized: Inception-v4 vs Inception-ResNet-v2 at matched
cost, and the same Inception-ResNet-v2 without its shortcuts (`use_residual=False`).

Narrow (width 0.25) and shallow networks in the figures' layouts ('paper' variant, the
same Fig. 3 stem) on the offline dataset at 80 px. Block counts are chosen so the two
networks cost the same: Inception-v4 with 1/2/1 Inception-A/B/C blocks and
Inception-ResNet-v2 with 1/3/1 residual blocks both take 0.028 GFLOPs per image
(forward, `python -m experiments.summarize`), as the full networks are matched in the
paper (sec. 3.1).

    python -m experiments.sweep --config=configs/sweeps/offline_comparison.py \
        --workdir=runs/offline_comparison
    python -m experiments.plot_curves runs/offline_comparison --metric=top1_error,top5_error \
        --out=curves.png
    python -m experiments.summarize runs/offline_comparison --targets=0.5,0.7

The paper-sized comparison is configs/sweeps/paper_pairs.py:imagenet (plus
configs/sweeps/use_residual.py:imagenet).
"""

from configs.sweeps import common


def get_config(setting: str | None = None):
  if setting not in (None, 'offline'):
    raise ValueError('offline_comparison is the offline comparison; on ImageNet use '
                     'configs/sweeps/paper_pairs.py:imagenet')
  config = common.base_config(setting)
  config.model.variant = 'paper'
  config.model.width_multiplier = 0.25
  config.num_train_steps = 500
  config.log_every_steps = 10
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 100
  return config


ARMS = (
    {'model.name': 'inception_v4', 'model.repeats': (1, 2, 1)},
    {'model.name': 'inception_resnet_v2', 'model.repeats': (1, 3, 1)},
    {'model.name': 'inception_resnet_v2', 'model.repeats': (1, 3, 1), 'model.use_residual': False},
)
SEEDS = (0, 1, 2)  # Each arm with three seeds: plot_curves draws the band, summarize the spread.


def sweep(setting: str | None = None) -> list[dict]:
  del setting
  return [{**arm, 'seed': seed} for arm in ARMS for seed in SEEDS]
