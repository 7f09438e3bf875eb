"""Residual connections on and off: Inception-ResNet-v2 and the same network without its
shortcuts (`use_residual=False` keeps every layer and parameter, drops the addition).

    python -m experiments.sweep --config=configs/sweeps/use_residual.py \
        --workdir=runs/use_residual
    python -m experiments.plot_curves runs/use_residual --metric=top1_error --out=curves.png

Paper-sized (ILSVRC-2012, 299 px):

    python -m experiments.sweep --config=configs/sweeps/use_residual.py:imagenet \
        --workdir=runs/use_residual_imagenet --config.data_dir=/path/to/tensorflow_datasets
"""

from configs.sweeps import common


def get_config(setting: str | None = None):
  return common.base_config(setting)


def sweep(setting: str | None = None) -> list[dict]:
  del setting
  return [{'model.use_residual': True}, {'model.use_residual': False}]
