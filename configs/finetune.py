"""Fine-tunes converted ImageNet weights on a new dataset: the classifier is replaced.

    # 1. Convert released weights (README, "Pretrained weights"), e.g. TF-Slim's:
    python -m inception_jax.convert --from=slim \
        --source=inception_resnet_v2_2016_08_30.ckpt --model=inception_resnet_v2 \
        --out=weights/slim_inception_resnet_v2
    # 2. Fine-tune on Imagenette (10 ImageNet classes; TFDS downloads it):
    python main.py --config=configs/finetune.py --workdir=runs/finetune \
        --config.init_from=weights/slim_inception_resnet_v2
    # Offline instead: --config.dataset=offline_shapes --config.eval_split=test

Every tensor but the classifier comes from `init_from`; the classifier gets the
dataset's class count and a fresh initialisation. The model options must match
the converted ones (`init_from/model.json`; training refuses a mismatch):
Keras and TF-Slim weights have no BatchNorm gamma (bn_scale=False), timm's do
(`--config.model.bn_scale=True`); for the other networks set
`--config.model.name=inception_v3` or `inception_v4`.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  # A placeholder: the --out directory of step 1 (validation refuses a missing one).
  config.init_from = 'weights/slim_inception_resnet_v2'

  # The released network: full width, the slim layout's repeats and scales.
  config.model.name = 'inception_resnet_v2'
  config.model.variant = 'slim'
  config.model.width_multiplier = 1.0
  config.model.repeats = ()
  config.model.residual_scale = (0.17, 0.10, 0.20)
  config.model.bn_scale = False
  config.model.aux_logits = False  # Keras has none; slim's is then not loaded.
  config.model.bn_momentum = 0.99  # Statistics that adapt within a short run.

  config.dataset = 'imagenette/320px-v2'
  config.eval_split = 'validation'
  config.image_size = 299  # The size the weights were trained at.
  config.color_distortion = False
  config.cache = False
  config.shuffle_buffer_size = 10_000

  # A short run at a small learning rate, so the pretrained features are kept.
  config.learning_rate = 0.001
  config.lr_decay_epochs = 1.0
  config.warmup_epochs = 0.2
  config.ema_decay = 0.999
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 5.0
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
