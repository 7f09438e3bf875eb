"""The base configs the sweeps start from, chosen by the sweep file's argument.

'offline' (the default): configs/default.py, a narrow Inception-ResNet-v2 on the
offline dataset, with evaluations often enough to draw convergence curves.
'imagenet': the paper's ILSVRC-2012 setting of configs/default.py's `imagenet()`.
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
  return config
