"""The offline default: a narrow Inception-ResNet-v2 on the offline dataset, CPU-sized.

    python main.py --config=configs/default.py --workdir=runs/default

Every other config imports this one and patches it, so every key lives here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Model (keyword options of inception_jax.models.create_model). ---
  config.model = ml_collections.ConfigDict()
  config.model.name = 'inception_resnet_v2'  # inception_v3 | inception_v4 | inception_resnet_v{1,2}
  config.model.variant = 'slim'              # 'paper' (the figures) or 'slim' (the checkpoints)
  config.model.width_multiplier = 0.25       # Scales every filter count (min 8).
  config.model.repeats = (2, 3, 2)           # A, B, C blocks; () = the paper's.
  config.model.residual_scale = (0.17, 0.10, 0.20)  # One float, or per grid 35/17/8.
  config.model.use_residual = True           # False: the paper's no-shortcut ablation.
  config.model.bn_scale = False              # BatchNorm gamma (TF-Slim/Keras: none).
  config.model.bn_momentum = 0.9             # TF-Slim uses 0.9997 for long runs.
  config.model.aux_logits = False            # Auxiliary head on the 17x17 grid.
  config.model.dropout_rate = 0.2            # Paper: keep probability 0.8.
  config.model.dtype = 'float32'             # Computation dtype: float32 | bfloat16 (GPU/TPU).
  config.model.scan_blocks = False           # nn.scan over repeated blocks (compile time).
  config.model.remat = False                 # Recompute blocks in the backward pass.
  config.model.bn_group_size = 0             # Images per BatchNorm statistics group; 0: whole batch.
  config.model.kernels = 'auto'              # Kernel set (inception_jax/ops): auto | reference | xla_cpu.
  config.model.cpu_conv_library = 'eigen'    # xla_cpu's conv library: eigen | ynnpack.
  config.model.stem_stride = 2               # First conv's stride; 1 for low-res input (v3 sec. 9).
  config.model.stem_pool = True              # False removes the stem's first max pool (v3 sec. 9).
  config.model.avg_pool_include_pad = False  # True: avg pools count padding (torchvision weights).

  # --- Data (inception_jax.data). ---
  config.dataset = 'offline_shapes'  # 'offline_shapes', any TFDS name, 'image_folder', 'synthetic'.
  config.data_dir = ''               # TFDS data dir ('' = ~/tensorflow_datasets).
  config.manual_dir = ''             # Where imagenet2012's tars are ('' = data_dir/downloads/manual).
  config.image_folder = ''           # root/<split>/<label>/*.jpg when dataset == 'image_folder'.
  config.train_split = 'train'
  config.eval_split = 'test'
  config.holdout_fraction = 0.0      # > 0: evaluate during training on this much of train_split.
  config.image_size = 80             # 299 for the paper; 75 is the networks' minimum.
  config.color_distortion = False    # Inception colour distortion in training (on the devices).
  config.eval_crop_fraction = 0.875  # Central crop for evaluation.
  config.shuffle_buffer_size = 5_000
  config.cache = True                # Keep decoded examples in memory (small TFRecord datasets).
  config.data_file_format = 'tfrecord'  # The offline dataset's: 'array_record' resumes in O(1).
  config.data_threads = 0            # tf.data's private thread pool (0: its shared default).
  config.data_ram_budget_gb = 0.0    # tf.data autotuner's memory budget (0: its default).
  config.prefetch_batches = 2        # Batches moved to the devices ahead of their step.

  # --- Optimization (paper sec. 4). ---
  config.optimizer = 'rmsprop'       # 'rmsprop' (TF form) or 'sgd'.
  config.learning_rate = 0.045
  config.scale_learning_rate = False  # lr *= batch_size / base_batch_size.
  config.base_batch_size = 32        # The batch that learning_rate is for.
  config.lr_decay_rate = 0.94        # Staircase decay ...
  config.lr_decay_epochs = 2.0       # ... every this many epochs.
  config.warmup_epochs = 0.0         # Linear warm-up from 0.
  config.rmsprop_decay = 0.9
  config.rmsprop_epsilon = 1.0       # Inside the square root, as in TensorFlow.
  config.momentum = 0.9
  config.nesterov = False            # SGD only.
  config.grad_clip_norm = 2.0        # Global norm; 0 disables.
  config.label_smoothing = 0.1
  config.weight_decay = 4e-5         # L2 on kernels in the loss, as TF-Slim.
  config.aux_loss_weight = 0.4
  config.ema_decay = 0.9999          # Parameter EMA for evaluation (TF's num_updates ramp).
  config.nonfinite_policy = 'skip'   # 'skip' the update and count it, or 'stop'.
  config.stop_if_dead_for_steps = 0  # > 0: end a run whose pre-pool layer has been dead this long.

  # --- Schedule and loop (names as google/flax examples/imagenet). ---
  config.batch_size = 32             # Global batch of an update, split over all devices.
  config.grad_accum_steps = 1        # Micro-batches per update (batch_size / this at a time).
  config.eval_batch_size = 64
  config.num_epochs = 4.0
  config.num_train_steps = -1        # > 0 overrides num_epochs.
  config.steps_per_eval = -1         # -1: the whole eval split.
  config.log_every_steps = 20
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 3
  config.seed = 0

  # --- Run. ---
  config.init_from = ''              # Weights dir (convert/finetune); the head is re-initialised if its shape differs.
  config.allow_config_change = False  # Resume a workdir whose saved config differs.
  config.distributed = 'auto'        # jax.distributed.initialize: auto | true | false.
  config.distributed_heartbeat_timeout_s = 100  # A peer silent this long stops every process.
  config.compilation_cache_dir = ''  # Persistent XLA cache ('' = off).
  config.profile_steps = ()          # (first, last): a jax.profiler trace of those steps.
  return config


def imagenet(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Patches `config` to train `name` on ILSVRC-2012 as in the paper (sec. 4)."""
  config.model.name = name
  config.model.variant = 'paper' if name == 'inception_resnet_v1' else 'slim'
  config.model.width_multiplier = 1.0
  config.model.repeats = ()
  config.model.bn_momentum = 0.9997
  # TF-Slim trains v3, v4 and IR-v2 with the auxiliary head; IR-v1 has none.
  config.model.aux_logits = name != 'inception_resnet_v1'
  config.dataset = 'imagenet2012'
  config.eval_split = 'validation'   # For final numbers (experiments.evaluate).
  config.holdout_fraction = 0.01     # A minival of 12,811 training images, for training's evals.
  config.image_size = 299
  config.color_distortion = True
  config.cache = False
  config.shuffle_buffer_size = 16_384
  # The paper ran 50 asynchronous replicas of batch 32 at lr 0.045, each replica's
  # BatchNorm over its own 32 images; synchronous data parallelism over a global batch of
  # 256 keeps that lr. With scale_learning_rate=True a larger batch (a pod's) scales it
  # linearly from this one.
  config.model.bn_group_size = 32
  config.batch_size = 256
  config.base_batch_size = 256
  config.eval_batch_size = 256
  # Accelerators: bfloat16 compute (float32 parameters, optimizer state and statistics),
  # and compiled steps kept between runs (a full network compiles for minutes).
  config.model.dtype = 'bfloat16'
  config.compilation_cache_dir = '~/.cache/inception_jax/xla'
  # Each stage's repeated blocks as one scanned block: the v5e train step compiles in
  # 0.6-0.8x the time, with fewer temporaries (benchmarks/README.md, "Compile time").
  config.model.scan_blocks = True
  config.num_epochs = 100.0
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  return config
