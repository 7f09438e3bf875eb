"""Compile time, train and inference speed, FLOP rate and peak memory of the networks.

    python benchmarks/step_time.py --model=inception_resnet_v2 --batch=8 --image_size=299
    python benchmarks/step_time.py --model=inception_resnet_v2 --scan_blocks=true,false --json
    python benchmarks/step_time.py --model=inception_v3,inception_resnet_v2 --compare_keras
    python benchmarks/step_time.py --model=inception_resnet_v2 --compare_timm \
        --timm_python=/path/to/torch_venv/bin/python  # PyTorch and timm in a venv of their own

Every option that takes a comma-separated list is swept (all combinations), and each
setting runs in a fresh process of its own, on one device, so that compile caches and
peak memory do not carry over from one setting to the next. The train step is the real
one (`inception_jax.steps.train_step`: loss with label smoothing and L2, clipped TF-form
RMSProp, parameter EMA) on a fixed random batch: input pipeline time is not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common, peers
from benchmarks.common import bool_flag, list_of
from inception_jax import hugepages

# inception_jax.models.ARCHS and inception_jax.ops' KERNELS and CONV_LIBRARIES, restated so
# that the parent process, which only parses flags and starts workers, does not import jax
# (tests/test_benchmarks.py).
MODELS = ('inception_v3', 'inception_v4', 'inception_resnet_v1', 'inception_resnet_v2')
KERNELS = ('auto', 'reference', 'xla_cpu', 'xla_tpu')
CONV_LIBRARIES = ('eigen', 'ynnpack')


@dataclasses.dataclass(frozen=True)
class Setting:
  """One row of the table: a network and the options it is compiled with."""
  model: str
  batch: int
  image_size: int
  width_multiplier: float
  scan_blocks: bool
  remat: bool
  kernels: str
  cpu_conv_library: str
  dtype: str


# --- Measuring one setting (runs in the worker process). ----------------------

def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def _page_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _flops(fn: Callable, *args) -> float:
  """XLA's FLOP count of `fn(*args)` from the lowered (unoptimized) HLO."""
  import jax  # pylint: disable=g-import-not-at-top
  return float((jax.jit(fn).lower(*args).cost_analysis() or {}).get('flops', 0.0))


def _config(setting: Setting, args: argparse.Namespace):
  """The ImageNet config of `setting.model` with the setting applied."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.imagenet(default.get_config(), setting.model)
  config.model.variant = args.variant
  config.model.width_multiplier = setting.width_multiplier
  config.model.aux_logits = args.aux_logits
  config.model.dtype = setting.dtype
  config.model.scan_blocks = setting.scan_blocks
  config.model.remat = setting.remat
  config.model.kernels = setting.kernels
  config.model.cpu_conv_library = setting.cpu_conv_library
  config.model.repeats = args.repeats or ()
  config.image_size = setting.image_size
  config.batch_size = setting.batch
  config.model.bn_group_size = 0  # The statistics of the batch: any batch size, as timm's.
  return config


def _time_train(state, batch, step_fn, model, args: argparse.Namespace) -> dict[str, Any]:
  """Compiles and times the train step; returns its figures and the state it leaves."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  lowered = jax.jit(step_fn, donate_argnums=(0,),
                    compiler_options=model.compiler_options).lower(state, batch)
  lower_s = time.perf_counter() - start
  train_step = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = train_step.memory_analysis()
  start = time.perf_counter()
  state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  first_step_s = compile_s + time.perf_counter() - start

  def one_train_step():
    nonlocal state
    state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))

  for _ in range(args.warmup):
    one_train_step()
  faults = _page_faults()
  train_s = common.median_seconds(one_train_step, args.steps)
  return dict(state=state, lowered=lowered, lower_s=lower_s, compile_s=compile_s,
              first_step_s=first_step_s, train_s=train_s,
              faults=(_page_faults() - faults) / args.steps, train_rss=_peak_rss_mb(),
              temp_bytes=memory.temp_size_in_bytes if memory else None)


def _time_inference(model, variables, images, args: argparse.Namespace) -> tuple[float, float]:
  """(compile s, step s) of the inference forward pass."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False),
                  compiler_options=model.compiler_options).lower(variables, images).compile()
  compile_s = time.perf_counter() - start
  run_infer = lambda: jax.block_until_ready(infer(variables, images))
  for _ in range(args.warmup + 1):
    run_infer()
  return compile_s, common.median_seconds(run_infer, args.steps)


def _plain_flops(model, config, tx, batch, images, lowered) -> tuple[float, float]:
  """(train, inference) FLOPs of the plain network (unrolled, no remat), so that every
  variant is credited the same useful work: XLA counts a scanned body once and remat's
  recompute extra."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from inception_jax import steps  # pylint: disable=g-import-not-at-top
  plain_model = model.clone(scan_blocks=False, remat=False)
  plain_state = jax.eval_shape(functools.partial(
      steps.create_train_state, plain_model, config, tx))
  if model.scan_blocks or model.remat:
    train_flops = _flops(functools.partial(steps.train_step, model=plain_model, config=config,
                                           tx=tx), plain_state, batch)
  else:  # Already plain: lowering it again would only cost time.
    train_flops = float((lowered.cost_analysis() or {}).get('flops', 0.0))
  infer_flops = _flops(lambda v, x: plain_model.apply(v, x, train=False),
                       {'params': plain_state.params, 'batch_stats': plain_state.batch_stats},
                       images)
  return train_flops, infer_flops


def measure(setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
  """Times one setting: compile, steady-state train and inference steps, memory."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from inception_jax import optim, steps
  from inception_jax.data import augment

  rss_after_import = _peak_rss_mb()
  config = _config(setting, args)
  model = steps.create_model_from_config(config, args.num_classes)
  tx = optim.create_optimizer(config, optim.create_schedule(config, steps_per_epoch=1000),
                              model.kernel_set.flat_updates)
  # XLA's RngBitGenerator compiles ~3x faster than threefry for the hundreds of initializers
  # of the full networks (unrolled IR-v2: 31 s vs 85 s here); the values do not matter.
  with jax.default_prng_impl('unsafe_rbg'):
    state = jax.jit(functools.partial(steps.create_train_state, model, config, tx))()
  rng = np.random.RandomState(0)
  batch = {
      # uint8, as training's batches: the step scales them on the device.
      'image': jnp.asarray(rng.randint(0, 256, (setting.batch, setting.image_size,
                                                setting.image_size, 3)), jnp.uint8),
      'label': jnp.asarray(rng.randint(0, args.num_classes, setting.batch), jnp.int32)}
  num_params = sum(p.size for p in jax.tree.leaves(state.params))
  t = _time_train(state, batch, functools.partial(steps.train_step, model=model, config=config,
                                                  tx=tx), model, args)
  state = t['state']
  images = augment.to_signed_unit_range(batch['image'])
  infer_compile_s, infer_s = _time_inference(
      model, {'params': state.params, 'batch_stats': state.batch_stats}, images, args)
  peak_rss = _peak_rss_mb()
  train_flops, infer_flops = _plain_flops(model, config, tx, batch, images, t['lowered'])
  train_s = t['train_s']

  result = dataclasses.asdict(setting)
  result.update(
      variant=args.variant, repeats=args.repeats, params=int(num_params),
      kernels=model.kernels,  # As the model resolved 'auto' for this backend.
      aux_logits=args.aux_logits,
      compile_s=round(t['compile_s'], 2), lower_s=round(t['lower_s'], 2),
      first_step_s=round(t['first_step_s'], 2), infer_compile_s=round(infer_compile_s, 2),
      train_step_ms=round(1e3 * train_s, 1), infer_step_ms=round(1e3 * infer_s, 1),
      train_img_s=round(setting.batch / train_s, 3),
      infer_img_s=round(setting.batch / infer_s, 3),
      gflops_per_img=float(f'{infer_flops / setting.batch / 1e9:.4g}'),
      train_gflops_per_img=float(f'{train_flops / setting.batch / 1e9:.4g}'),
      train_gflop_s=round(train_flops / train_s / 1e9, 1),
      infer_gflop_s=round(infer_flops / infer_s / 1e9, 1),
      xla_temp_mb=round(t['temp_bytes'] / 2**20, 1) if t['temp_bytes'] is not None else None,
      train_peak_rss_mb=round(t['train_rss']), peak_rss_mb=round(peak_rss),
      train_page_faults=round(t['faults']),
      rss_after_import_mb=round(rss_after_import),
      steps=args.steps, device=str(jax.devices()[0].device_kind),
      num_devices=jax.device_count(), jax=jax.__version__,
      exec_time_optimization_effort=jax.config.jax_exec_time_optimization_effort)
  if args.compare_keras and setting.model in peers.KERAS_MODELS:
    result.update(peers.measure_keras(setting, args))
  return result


# --- Sweeping settings, each in its own process, and the table. ---------------

def _worker_env() -> dict[str, str]:
  """The environment of a worker: one CPU device, Keras on JAX, quiet TensorFlow, and
  glibc's huge pages for large allocations (main.py's too: inception_jax/hugepages.py),
  for our workers and timm's alike."""
  env = hugepages.with_huge_pages(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = flags.strip()
  env.pop('JAX_NUM_CPU_DEVICES', None)
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # Compile time must be measured, not cached.
  env['KERAS_BACKEND'] = 'jax'
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def _run_worker(command: list[str], setting: Setting) -> dict[str, Any]:
  proc = subprocess.run(command, env=_worker_env(), cwd=REPO, capture_output=True, text=True)
  records = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode or not records:
    sys.stderr.write(proc.stderr[-4000:])
    raise RuntimeError(f'{setting} failed with exit code {proc.returncode}')
  return json.loads(records[-1])


def run_setting(setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
  """Measures `setting` (and timm's network) in fresh worker processes: its JSON record."""
  flags = [f'--model={setting.model}', f'--batch={setting.batch}',
           f'--image_size={setting.image_size}',
           f'--width_multiplier={setting.width_multiplier}',
           f'--scan_blocks={setting.scan_blocks}', f'--remat={setting.remat}',
           f'--kernels={setting.kernels}', f'--cpu_conv_library={setting.cpu_conv_library}',
           f'--dtype={setting.dtype}',
           f'--variant={args.variant}', f'--num_classes={args.num_classes}',
           f'--aux_logits={args.aux_logits}', f'--steps={args.steps}',
           f'--warmup={args.warmup}'] + (['--compare_keras'] if args.compare_keras else []) + (
               [f'--repeats={",".join(map(str, args.repeats))}'] if args.repeats else [])
  script = os.path.abspath(__file__)
  record = _run_worker([sys.executable, script, '--worker'] + flags, setting)
  if args.compare_timm and setting.model in peers.TIMM_MODELS:
    record.update(_run_worker([args.timm_python, script, '--timm_worker'] + flags, setting))
  return record


COLUMNS = (  # (heading, key, format)
    ('model', 'model', '{}'), ('batch', 'batch', '{}'), ('size', 'image_size', '{}'),
    ('width', 'width_multiplier', '{:g}'), ('blocks', 'repeats', '{}'),
    ('scan', 'scan_blocks', '{:d}'),
    ('remat', 'remat', '{:d}'), ('kernels', 'kernels', '{}'),
    ('conv library', 'cpu_conv_library', '{}'),
    ('dtype', 'dtype', '{}'),
    ('compile s', 'compile_s', '{:.1f}'), ('train img/s', 'train_img_s', '{:.2f}'),
    ('infer img/s', 'infer_img_s', '{:.2f}'), ('GFLOP/img', 'gflops_per_img', '{:.3g}'),
    ('train GFLOP/s', 'train_gflop_s', '{:.0f}'), ('infer GFLOP/s', 'infer_gflop_s', '{:.0f}'),
    ('XLA temp MB', 'xla_temp_mb', '{:.0f}'), ('peak RSS MB', 'peak_rss_mb', '{:.0f}'),
    ('faults/step', 'train_page_faults', '{}'),
    ('keras 1st step s', 'keras_first_step_s', '{:.1f}'),
    ('keras train img/s', 'keras_train_img_s', '{:.2f}'),
    ('keras infer img/s', 'keras_infer_img_s', '{:.2f}'),
    ('timm 1st step s', 'timm_first_step_s', '{:.1f}'),
    ('timm train img/s', 'timm_train_img_s', '{:.2f}'),
    ('timm infer img/s', 'timm_infer_img_s', '{:.2f}'),
)


def format_table(records: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of the records; a peer's columns only when some record has them."""
  rows = common.table_rows(records, COLUMNS)
  for peer in ('keras', 'timm'):
    if not any(f'{peer}_train_img_s' in r for r in records):
      continue
    rows[0] += [f'train x {peer}', f'infer x {peer}']
    for row, r in zip(rows[1:], records):
      ratio = lambda k: (f'{r[k + "_img_s"] / r[f"{peer}_{k}_img_s"]:.2f}'
                         if r.get(f'{peer}_{k}_img_s') else '-')
      row += [ratio('train'), ratio('infer')]
  return common.markdown(rows)


# --- Command line. -------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', type=list_of(str, MODELS), default=list(MODELS),
                 help='networks to measure (default: all four)')
  p.add_argument('--batch', type=list_of(int), default=[8], help='images per step')
  p.add_argument('--image_size', type=list_of(int), default=[299],
                 help='input side in pixels (at least 75)')
  p.add_argument('--width_multiplier', type=list_of(float), default=[1.0],
                 help='scales every layer\'s depth')
  p.add_argument('--scan_blocks', type=list_of(bool_flag), default=[False],
                 help='nn.scan over repeated blocks (one copy of each block in the HLO); '
                      'off by default, as in training: faster steps on XLA:CPU')
  p.add_argument('--remat', type=list_of(bool_flag), default=[False],
                 help='recompute each block in the backward pass (jax.checkpoint)')
  p.add_argument('--kernels', type=list_of(str, KERNELS), default=['auto'],
                 help='the kernel set (inception_jax/ops; auto: xla_cpu on CPU, reference '
                      'on GPU and TPU)')
  p.add_argument('--cpu_conv_library', type=list_of(str, CONV_LIBRARIES), default=['eigen'],
                 help='XLA:CPU\'s library for convolutions and dots under kernels=xla_cpu')
  p.add_argument('--dtype', type=list_of(str, ('float32', 'bfloat16')), default=['float32'],
                 help='computation dtype; params and optimizer state stay float32')
  p.add_argument('--variant', default='slim', choices=('slim', 'paper'),
                 help='slim: the layout of the TF-Slim/Keras/timm checkpoints; paper: the '
                      'figures of the paper')
  p.add_argument('--repeats', type=list_of(int), default=None,
                 help='A,B,C: blocks in the repeated stages of inception_v4 and the '
                      'inception_resnet networks (default: the paper\'s; small values for '
                      'quick looks, e.g. how compile time grows with depth)')
  p.add_argument('--aux_logits', type=bool_flag, default=False,
                 help='auxiliary head (the Keras and timm peers have none)')
  p.add_argument('--num_classes', type=int, default=1000, help='classifier outputs')
  p.add_argument('--steps', type=int, default=5, help='timed steps (the median is reported)')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps after the first')
  p.add_argument('--compare_keras', action='store_true',
                 help='also time Keras InceptionV3/InceptionResNetV2 (JAX backend) in the '
                      'same process')
  p.add_argument('--compare_timm', action='store_true',
                 help='also time timm\'s inception_v3/v4/inception_resnet_v2 (PyTorch, eager) '
                      f'in the same run; needs `{peers.TIMM_INSTALL}`')
  p.add_argument('--timm_python', default=sys.executable,
                 help='the Python interpreter that has PyTorch and timm, e.g. another '
                      'venv\'s bin/python (default: this one)')
  p.add_argument('--json', action='store_true', help='one JSON object per setting per line')
  p.add_argument('--out', default='',
                 help='also append each setting\'s JSON line to this file as it is measured')
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--timm_worker', action='store_true', help=argparse.SUPPRESS)
  return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = _parser()
  args = p.parse_args(argv)
  if args.timm_worker:
    return args  # Checked by the parent; the timm venv may have no JAX to check with.
  # After parsing, so that --help does not wait for JAX to import.
  from inception_jax import models  # pylint: disable=g-import-not-at-top
  for name in ('batch', 'image_size', 'width_multiplier'):
    values = getattr(args, name)
    if any(v <= 0 for v in values):
      p.error(f'--{name}={",".join(map(str, values))} must be positive')
  if min(args.image_size) < models.MIN_IMAGE_SIZE:
    p.error(f'--image_size={",".join(map(str, args.image_size))} is below the minimum of '
            f'{models.MIN_IMAGE_SIZE}')
  if args.repeats is not None:
    for model in args.model:
      try:
        models.check_repeats(args.repeats, model, args.variant)
      except ValueError as e:
        p.error(f'--repeats: {e}')
  if args.steps < 1:
    p.error(f'--steps={args.steps} must be >= 1')
  if args.warmup < 0:
    p.error(f'--warmup={args.warmup} must be >= 0')
  if args.compare_timm:
    try:
      found = subprocess.run([args.timm_python, '-c', 'import timm, torch'],
                             capture_output=True).returncode == 0
    except OSError:
      found = False
    if not found:
      p.error(f'--compare_timm: {args.timm_python} cannot import PyTorch and timm, which '
              f'requirements.txt does not install; `{peers.TIMM_INSTALL}` there, or give '
              f'--timm_python of a venv that has them')
  return args


def settings(args: argparse.Namespace) -> list[Setting]:
  return [Setting(*values) for values in itertools.product(
      args.model, args.batch, args.image_size, args.width_multiplier, args.scan_blocks,
      args.remat, args.kernels, args.cpu_conv_library, args.dtype)]


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args.worker:
    (setting,) = settings(args)
    print(json.dumps(measure(setting, args)), flush=True)
    return
  if args.timm_worker:
    (setting,) = settings(args)
    print(json.dumps(peers.measure_timm(setting, args)), flush=True)
    return
  records = []
  for setting in settings(args):
    record = run_setting(setting, args)
    records.append(record)
    common.append_json(args.out, [record])  # As it comes: a long sweep keeps what it measured.
    if args.json:
      print(json.dumps(record), flush=True)
  if not args.json:
    print(format_table(records))


if __name__ == '__main__':
  main()
