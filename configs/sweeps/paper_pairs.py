"""The paper's pairs at matched cost (sec. 3.1, Figs. 21-26): Inception-v3 vs
Inception-ResNet-v1, and Inception-v4 vs Inception-ResNet-v2, all at their full depth.

All four use the figures' layouts ('paper' variant, so v4 and IR-v2 share the Fig. 3
stem) and no auxiliary head, so that each pair differs only in its blocks.

    python -m experiments.sweep --config=configs/sweeps/paper_pairs.py \
        --workdir=runs/paper_pairs
    python -m experiments.plot_curves runs/paper_pairs --metric=top1_error,top5_error \
        --x=epoch --out=paper_pairs.png

Offline, the networks are at width 0.25 (80 px); paper-sized, at full width on
ILSVRC-2012 (299 px):

    python -m experiments.sweep --config=configs/sweeps/paper_pairs.py:imagenet \
        --workdir=runs/paper_pairs_imagenet --config.data_dir=/path/to/tensorflow_datasets
"""

from configs.sweeps import common

PAIRS = (('inception_v3', 'inception_resnet_v1'), ('inception_v4', 'inception_resnet_v2'))


def get_config(setting: str | None = None):
  config = common.base_config(setting)
  config.model.variant = 'paper'
  config.model.repeats = ()  # The paper's block counts.
  config.model.aux_logits = False
  return config


def sweep(setting: str | None = None) -> list[dict]:
  del setting
  return [{'model.name': name} for pair in PAIRS for name in pair]
