"""The base configs the sweeps start from, chosen by the sweep file's argument.

'offline' (the default): configs/default.py, a narrow Inception-ResNet-v2 on the
offline dataset, with evaluations often enough to draw convergence curves, on a
minival of 10% of the training images: a sweep compares and chooses on it, and the
test split gives the final numbers (`experiments.evaluate`).
'imagenet': the paper's ILSVRC-2012 setting of configs/default.py's `imagenet()`
(its minival: 1% of the training images).
"""

import ml_collections

from configs import default

SETTINGS = ('offline', 'imagenet')


def base_config(setting: str | None, name: str = 'inception_resnet_v2'
                ) -> ml_collections.ConfigDict:
  setting = setting or 'offline'
  if setting not in SETTINGS:
    raise ValueError(f'sweep setting {setting!r} is invalid; valid: {", ".join(SETTINGS)}')
  config = default.get_config()
  if setting == 'imagenet':
    return default.imagenet(config, name)
  config.model.name = name
  config.eval_every_steps = 100
  config.holdout_fraction = 0.1
  return config
