"""The paper's pairs at matched cost (sec. 3.1, Figs. 21-26): Inception-v3 vs
Inception-ResNet-v1, and Inception-v4 vs Inception-ResNet-v2, three seeds per arm.

All four use the figures' layouts ('paper' variant, so v4 and IR-v2 share the Fig. 3
stem) and no auxiliary head, so that each pair differs only in its blocks.

Offline (the default, ~25 minutes on 2 CPU cores), the networks are at width 0.25 and
80 px, 500 steps of batch 32, with block counts chosen so that each pair costs the same
(forward FLOPs per image, `python -m experiments.summarize`): Inception-v3 (its fixed
blocks) 0.02236 GFLOPs against Inception-ResNet-v1 with 2/5/2 blocks 0.02236;
Inception-v4 with 1/2/1 blocks 0.0284 against Inception-ResNet-v2 with 1/3/1 0.0286.

    python -m experiments.sweep --config=configs/sweeps/paper_pairs.py \
        --workdir=runs/paper_pairs --parallel=2
    python -m experiments.summarize runs/paper_pairs/model.name=inception_v3* \
        runs/paper_pairs/model.name=inception_resnet_v1*    # one pair, paired by seed
    python -m experiments.plot_curves runs/paper_pairs/model.name=inception_v3* \
        runs/paper_pairs/model.name=inception_resnet_v1* --metric=top1_error --out=v3.png

Paper-sized, at full width and depth on ILSVRC-2012 (299 px):

    python -m experiments.sweep --config=configs/sweeps/paper_pairs.py:imagenet \
        --workdir=runs/paper_pairs_imagenet --config.data_dir=/path/to/tensorflow_datasets
"""

from configs.sweeps import common

# Each pair: (non-residual arm, residual arm) with the offline block counts that match
# their cost (() for Inception-v3, whose blocks differ from one another).
PAIRS = ((('inception_v3', ()), ('inception_resnet_v1', (2, 5, 2))),
         (('inception_v4', (1, 2, 1)), ('inception_resnet_v2', (1, 3, 1))))
SEEDS = (0, 1, 2)


def get_config(setting: str | None = None):
  config = common.base_config(setting)
  config.model.variant = 'paper'
  config.model.repeats = ()  # The paper's block counts.
  config.model.aux_logits = False
  if setting in (None, 'offline'):
    config.model.width_multiplier = 0.25
    config.num_train_steps = 500
    config.log_every_steps = 10
    config.eval_every_steps = 50
    config.checkpoint_every_steps = 100
    config.keep_checkpoints = 1
  return config


def sweep(setting: str | None = None) -> list[dict]:
  offline = setting in (None, 'offline')
  return [{'model.name': name, 'model.repeats': repeats if offline else (), 'seed': seed}
          for pair in PAIRS for name, repeats in pair for seed in SEEDS]
