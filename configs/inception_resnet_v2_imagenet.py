"""inception_resnet_v2 on ImageNet at the paper's settings (sec. 4): 299 px, TF-form RMSProp, lr 0.045 x 0.94 / 2 epochs.

    python main.py --config=configs/inception_resnet_v2_imagenet.py --workdir=runs/inception_resnet_v2 \
        --config.data_dir=/path/to/tensorflow_datasets
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  return default.imagenet(default.get_config(), 'inception_resnet_v2')
