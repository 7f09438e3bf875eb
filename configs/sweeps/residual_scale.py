"""Residual scale (paper sec. 3.3): Inception-ResNet-v2 with every residual branch scaled
by 0.1, 0.2 or 0.3 before the addition, or not scaled (1.0).

    python -m experiments.sweep --config=configs/sweeps/residual_scale.py \
        --workdir=runs/residual_scale
    python -m experiments.summarize runs/residual_scale

Paper-sized (the full network at 299 px on ILSVRC-2012, built with `tfds build`):

    python -m experiments.sweep --config=configs/sweeps/residual_scale.py:imagenet \
        --workdir=runs/residual_scale_imagenet --config.data_dir=/path/to/tensorflow_datasets
"""

from configs.sweeps import common

SCALES = (0.1, 0.2, 0.3, 1.0)


def get_config(setting: str | None = None):
  return common.base_config(setting)


def sweep(setting: str | None = None) -> list[dict]:
  del setting  # The same scales at every size.
  return [{'model.residual_scale': s} for s in SCALES]
