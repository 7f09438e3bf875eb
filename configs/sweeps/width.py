"""Width: Inception-ResNet-v2 with every filter count multiplied by a width multiplier.

    python -m experiments.sweep --config=configs/sweeps/width.py --workdir=runs/width
    python -m experiments.summarize runs/width

Paper-sized (ILSVRC-2012, 299 px, widths 0.5 to 1.0 of the paper's):

    python -m experiments.sweep --config=configs/sweeps/width.py:imagenet \
        --workdir=runs/width_imagenet --config.data_dir=/path/to/tensorflow_datasets
"""

from configs.sweeps import common

WIDTHS = {'offline': (0.125, 0.25, 0.5), 'imagenet': (0.5, 0.75, 1.0)}


def get_config(setting: str | None = None):
  return common.base_config(setting)


def sweep(setting: str | None = None) -> list[dict]:
  get_config(setting)  # Checks the setting.
  return [{'model.width_multiplier': w} for w in WIDTHS[setting or 'offline']]
