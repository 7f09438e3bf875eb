"""One check of a single-GPU host: versions, full Inception-ResNet-v2 speed and MFU beside
timm, and a short training whose loss must fall.

    python benchmarks/gpu_check.py --out=gpu_check.jsonl           # ~7.5 min on one H100
    python benchmarks/gpu_check.py --smoke --out=/tmp/smoke.jsonl  # the same code paths on CPU

For a host that has JAX (and perhaps PyTorch) but no network: at the first missing package,
each package of benchmarks/wheels that the host lacks is installed (`pip install --no-index
--no-deps --find-links`); requirements-gpu-check.txt fills the folder (benchmarks/README.md,
"The GPU check"). No TensorFlow: the data are `dataset='synthetic'`, made on the device, and
only the training part imports `inception_jax.train`; the versions record names the module
that brought TensorFlow in, where it is installed.

The parts run in order of importance, each only if its estimate fits in what is left of
--budget_s (the first always runs): the first (batch, scan) cell of the full network, the
short training on that cell's config (its steps come from the persistent compilation cache
the cell filled), timm at the first batch, then the other cells and batches. Each part
appends one JSON line to --out as it ends; a Markdown table and the comparisons close the
run. Exit status 1 if a part failed or the loss did not fall.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common, peers
from benchmarks.common import bool_flag, list_of

WHEELS = os.path.join(REPO, 'benchmarks', 'wheels')
MODEL = 'inception_resnet_v2'
# What the timed parts import: not inception_jax.train (the input pipelines).
TIMED_MODULES = ('configs.default', 'inception_jax.hardware', 'inception_jax.monitor',
                 'inception_jax.ops', 'inception_jax.optim', 'inception_jax.parallel',
                 'inception_jax.steps', 'inception_jax.data.synthetic')
VERSIONS = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'flax', 'optax',
            'orbax-checkpoint', 'numpy', 'ml-collections', 'clu', 'tensorflow', 'tensorflow-cpu',
            'torch', 'timm')
TIMM_MODES = ('eager', 'compile')
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
MFU_GOAL = 0.25  # On an H100; MLPerf's ResNet-50 reaches 18-27% on A100/H100.


@dataclasses.dataclass(frozen=True)
class Mode:
  """What --smoke changes: the network's size and the defaults of the step counts."""
  width: float
  repeats: tuple[int, ...]
  image_size: int
  bn_group_size: int
  batch: tuple[int, ...]
  steps: int
  warmup: int
  train_steps: int
  # Seconds per kind of part until one of its kind is measured. For an H100 these are
  # guesses (no GPU has run this): a full IR-v2 train step compiles in 1-2 min on a GPU host.
  estimates: dict[str, float]


FULL = Mode(1.0, (), 299, 32, (128, 64), 20, 3, 200, {
    'jax_unrolled': 150, 'jax_scanned': 100, 'train': 75, 'timm_eager': 45,
    'timm_compile': 150})
SMOKE = Mode(0.125, (1, 1, 1), 75, 2, (4,), 3, 1, 30, {
    'jax_unrolled': 20, 'jax_scanned': 20, 'train': 20, 'timm_eager': 10,
    'timm_compile': 30})


# --- Packages on a bare host. -----------------------------------------------------

def install_missing(wheels: str) -> list[str]:
  """Installs every package of `wheels` that this Python lacks; returns their names.

  `--no-deps`: the folder holds what the imports need, not the whole dependency tree
  (tensorboard's grpcio, pillow, ...), and the host's own JAX is never replaced.
  """
  names = sorted({f.split('-')[0] for f in os.listdir(wheels) if f.endswith('.whl')})
  missing = [n for n in names if _version(n) is None]
  if missing:
    print(f'installing from {wheels} (no network): {" ".join(missing)}', flush=True)
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps',
                           '--find-links', wheels, *missing], capture_output=True, text=True)
    if proc.returncode:
      last = (proc.stderr.strip().splitlines() or ['pip failed'])[-1]
      raise ImportError(f'pip could not install from {wheels}: {last}')
    importlib.invalidate_caches()
  return missing


def import_all(names: Sequence[str], wheels: str) -> str | None:
  """Imports `names` in order; the first of them that brought TensorFlow in, if one did."""
  culprit = None
  for name in names:
    before = 'tensorflow' in sys.modules
    _import(name, wheels)
    if not before and 'tensorflow' in sys.modules:
      culprit = culprit or name
  return culprit


def _import(name: str, wheels: str) -> None:
  """Imports `name`; at a missing package, installs from `wheels` all that the host lacks.

  Raises:
    ImportError: in one line, for a module that imports TensorFlow as it is imported where
      there is none, or one that needs a package neither the host nor `wheels` has.
  """
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    if (e.name or '').startswith('tensorflow'):
      raise ImportError(f'{name} imports {e.name} as it is imported; the GPU check must run '
                        'without TensorFlow') from None
    if not (os.path.isdir(wheels) and install_missing(wheels)):
      raise ImportError(f'{name} needs the module {e.name}, which neither this Python nor '
                        f'{wheels} has; add its package to requirements-gpu-check.txt and '
                        'fill the folder again (benchmarks/README.md, "The GPU check")') from None
    _import(name, wheels)  # Once more: a second miss finds nothing left to install.


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


# --- The host: versions and the compilation cache. ---------------------------------

def versions(tensorflow_by: str | None) -> dict[str, Any]:
  """Python, the packages, the device, CUDA as jax's plugin reports it, and which module of
  the timed parts imported TensorFlow (None: none did)."""
  import jax
  record = {'part': 'versions', 'python': platform.python_version(),
            **{dist: _version(dist) for dist in VERSIONS}}
  device = jax.devices()[0]
  record.update(device=device.device_kind, platform=device.platform,
                device_count=jax.device_count(),
                platform_version=getattr(device.client, 'platform_version', None),
                tensorflow_imported_by=tensorflow_by,
                env={k: v for k, v in os.environ.items()
                     if k.startswith(('XLA_', 'JAX_', 'CUDA_', 'NVIDIA_'))})
  if device.platform == 'gpu':
    record.update(_environment())
  return record


def _environment() -> dict[str, str]:
  """jax's own report of the host (versions, and nvidia-smi's driver and CUDA lines on a GPU
  host): the public reader; jax has none of the plugin's version numbers alone."""
  import jax
  return {'environment': jax.print_environment_info(return_string=True)}


def use_compilation_cache(cache_dir: str) -> str:
  """Turns on jax's persistent cache (`cache_dir`, or '': a fresh folder): the training part
  loads the steps the first cell compiled, and a second run all of them."""
  import jax
  path = os.path.expanduser(cache_dir) if cache_dir else tempfile.mkdtemp(prefix='gpu_check_')
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)  # The smoke's too.
  jax.monitoring.register_event_listener(_count_cache_hit)
  return path


_cache_hits = [0]


def _count_cache_hit(event: str, **kwargs: Any) -> None:  # pylint: disable=unused-argument
  if event == CACHE_HIT_EVENT:
    _cache_hits[0] += 1


def peak_flops(args: argparse.Namespace) -> float | None:
  """The device's dense bf16 FLOP/s: --peak_tflops, else hardware.py's (None if unlisted)."""
  import jax
  from inception_jax import hardware
  chip = hardware.chip(jax.devices()[0])
  return args.peak_tflops * 1e12 or (chip.peak_flops if chip else None)


# --- One (batch, scan) cell of the full network. ----------------------------------

def cell_config(args: argparse.Namespace, batch: int, scan: bool):
  """The ImageNet config of IR-v2 (bf16, BatchNorm groups of 32, aux head) on synthetic data."""
  from configs import default
  from inception_jax.data import synthetic
  config = default.imagenet(default.get_config(), MODEL)
  config.model.width_multiplier = args.mode.width
  config.model.repeats = args.mode.repeats
  config.model.bn_group_size = args.mode.bn_group_size
  config.model.scan_blocks = scan
  config.image_size = args.mode.image_size
  config.dataset, config.holdout_fraction = synthetic.NAME, 0.0  # No splits to hold out.
  config.batch_size = config.eval_batch_size = batch
  return config


def compile_steps(config, mesh) -> dict[str, Any]:
  """Initial state, lowered and compiled train and eval steps, jitted as train_and_evaluate
  jits them (same HLO, so its compiles are cache hits), and the seconds each took."""
  import jax
  from inception_jax import ops, optim, parallel, steps
  from inception_jax.data import synthetic
  model = steps.create_model_from_config(config, synthetic.NUM_CLASSES,
                                         ops.platform_of(mesh.devices.flat))
  # train.schedule_steps' steps per epoch: the schedule's constants are in the HLO.
  per_epoch = max(1, synthetic.NUM_TRAIN_EXAMPLES // config.batch_size)
  tx = optim.create_optimizer(config, optim.create_schedule(config, per_epoch),
                              model.kernel_set.flat_updates)
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  out = {'model': model, 'tx': tx}
  start = time.perf_counter()
  out['state'] = jax.block_until_ready(jax.jit(functools.partial(
      steps.create_train_state, model, config, tx), out_shardings=replicated)())
  out['init_s'] = time.perf_counter() - start
  structs = (parallel.abstract(out['state'], replicated),
             parallel.abstract(steps.batch_spec(config, config.batch_size), sharded))
  start = time.perf_counter()
  out['train_lowered'], out['train_step'] = parallel.compile_and_sync(
      jax.jit(functools.partial(steps.train_step, model=model, config=config, tx=tx,
                                shards=mesh.devices.size),
              in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
              donate_argnums=(0,), compiler_options=model.compiler_options),
      'train_step', *structs)
  out['compile_s'] = time.perf_counter() - start
  start = time.perf_counter()
  out['eval_lowered'], out['eval_step'] = parallel.compile_and_sync(
      jax.jit(functools.partial(steps.eval_step, model=model),
              in_shardings=(replicated, sharded), compiler_options=model.compiler_options),
      'eval_step', *structs)
  out['eval_compile_s'] = time.perf_counter() - start
  return out


def run_steps(step: Callable[[], Any], count: int, wait: Callable[[Any], Any]) -> float:
  """Seconds of `count` calls back to back, ended by one wait on the last result: the
  device's throughput, with no host sync between steps."""
  start = time.perf_counter()
  result = None
  for _ in range(count):
    result = step()
  wait(result)
  return time.perf_counter() - start


def time_steps(compiled: dict[str, Any], batch: dict[str, Any],
               args: argparse.Namespace) -> tuple[float, float]:
  """Seconds per train step and per eval step, each after --warmup untimed ones."""
  import jax
  state = compiled['state']

  def train():
    nonlocal state  # The old state is donated: each step takes the last one's.
    state, metrics = compiled['train_step'](state, batch)
    return state, metrics

  def evaluate():
    return compiled['eval_step'](state, batch)

  times = []
  for step in (train, evaluate):
    run_steps(step, args.warmup, jax.block_until_ready)
    times.append(run_steps(step, args.steps, jax.block_until_ready) / args.steps)
  return times[0], times[1]


def plain_flops(config, compiled: dict[str, Any], mesh) -> tuple[float, float]:
  """Train and eval FLOPs per device of the plain (unrolled) network, as train._model_flops
  counts them: XLA counts a scanned body once."""
  import jax
  from inception_jax import monitor, steps
  model, n = compiled['model'], mesh.devices.size
  if not model.scan_blocks:
    return (monitor.step_flops(compiled['train_lowered'], n),
            monitor.step_flops(compiled['eval_lowered'], n))
  plain = model.clone(scan_blocks=False, remat=False)
  state = jax.eval_shape(functools.partial(steps.create_train_state, plain, config,
                                           compiled['tx']))
  spec = steps.batch_spec(config, config.batch_size)
  train = jax.jit(functools.partial(steps.train_step, model=plain, config=config,
                                    tx=compiled['tx'], shards=n)).lower(state, spec)
  evals = jax.jit(functools.partial(steps.eval_step, model=plain)).lower(state, spec)
  return monitor.step_flops(train, n), monitor.step_flops(evals, n)


def measure_cell(args: argparse.Namespace, batch: int, scan: bool) -> dict[str, Any]:
  """Compile time, train and eval img/s, TFLOP/s, MFU and memory of one cell."""
  from inception_jax import monitor, parallel
  from inception_jax.data import synthetic
  config = cell_config(args, batch, scan)
  mesh = parallel.create_mesh()
  hits = _cache_hits[0]
  compiled = compile_steps(config, mesh)
  data = next(synthetic.batches(config, parallel.batch_sharded(mesh), batch))
  train_s, eval_s = time_steps(compiled, data, args)
  train_flops, eval_flops = plain_flops(config, compiled, mesh)
  peak = peak_flops(args)
  memory = compiled['train_step'].memory_analysis()
  used = monitor.memory_scalars()
  return {
      'image_size': config.image_size, 'width_multiplier': config.model.width_multiplier,
      'dtype': config.model.dtype, 'aux_logits': config.model.aux_logits,
      'bn_group_size': config.model.bn_group_size, 'kernels': compiled['model'].kernels,
      'init_s': round(compiled['init_s'], 2), 'compile_s': round(compiled['compile_s'], 2),
      'eval_compile_s': round(compiled['eval_compile_s'], 2),
      'cache_hits': _cache_hits[0] - hits,
      'train_step_ms': round(1e3 * train_s, 2),
      'train_img_s': round(batch / train_s, 2), 'eval_img_s': round(batch / eval_s, 2),
      'train_gflops_per_img': round(train_flops / batch / 1e9, 3),
      'train_tflop_s': train_flops / train_s / 1e12, 'eval_tflop_s': eval_flops / eval_s / 1e12,
      'train_mfu': train_flops / train_s / peak if peak else None,
      'eval_mfu': eval_flops / eval_s / peak if peak else None,
      'peak_tflop_s': peak / 1e12 if peak else None,
      'xla_temp_gb': memory.temp_size_in_bytes / 1e9 if memory else None,
      # The process's peak so far (jax cannot reset it), or on CPU the peak resident memory.
      'peak_gb': used.get('memory/device_peak_gb', used.get('memory/host_peak_rss_gb')),
      'peak_of': 'device' if 'memory/device_peak_gb' in used else 'host RSS',
      'steps': args.steps, 'warmup': args.warmup}


# --- The short training, and timm. -------------------------------------------------

def run_training(args: argparse.Namespace) -> dict[str, Any]:
  """train_and_evaluate on the first cell's config for --train_steps: the loss must fall.

  One synthetic batch is fed every step, so a network that learns memorizes it.
  """
  tensorflow_by = import_all(['inception_jax.train'], args.wheels)
  from inception_jax import train
  from inception_jax import metrics as metrics_lib
  config = cell_config(args, args.batch[0], args.scan_blocks[0])
  config.num_train_steps = args.train_steps
  config.log_every_steps = max(1, args.train_steps // 10)  # Each loss: a tenth of the run's.
  config.eval_every_steps = config.checkpoint_every_steps = args.train_steps
  config.steps_per_eval = 2
  hits = _cache_hits[0]
  with tempfile.TemporaryDirectory(prefix='gpu_check_run_') as workdir:
    train.train_and_evaluate(config, workdir)
    logs = [r for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r]
  first, last = logs[0]['train/loss'], logs[-1]['train/loss']
  return {'train_steps': args.train_steps, 'first_loss': first, 'last_loss': last,
          'loss_fell': last < first, 'train_img_s': logs[-1].get('perf/images_per_s'),
          'train_mfu': _finite(logs[-1].get('perf/mfu')), 'cache_hits': _cache_hits[0] - hits,
          'tensorflow_imported_by': tensorflow_by}


def run_timm(args: argparse.Namespace, batch: int, mode: str) -> dict[str, Any]:
  """timm's IR-v2 in a process of its own (`--timm_worker`), which frees its memory."""
  if importlib.util.find_spec('torch') and os.path.isdir(args.wheels):
    install_missing(args.wheels)  # timm is pure Python: it travels with our packages.
  if not all(importlib.util.find_spec(m) for m in ('torch', 'timm')):
    return {'skipped': f'torch or timm not importable ({peers.TIMM_INSTALL})'}
  command = [sys.executable, os.path.abspath(__file__), f'--timm_worker={mode}',
             f'--batch={batch}', f'--steps={args.steps}', f'--warmup={args.warmup}'] + (
                 ['--smoke'] if args.smoke else [])
  proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                        timeout=max(300, args.budget_s))
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode or not lines:
    last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
    raise RuntimeError(f'timm worker exited with {proc.returncode}: {last}')
  return json.loads(lines[-1])


def measure_timm(args: argparse.Namespace) -> dict[str, Any]:
  """One timm mode, AMP (bf16 autocast) and channels_last; peers.measure_timm's step (forward,
  smoothed cross-entropy, backward, RMSProp) on the GPU: no aux head, EMA, clip or L2."""
  import timm
  import torch
  if not torch.cuda.is_available():
    return {'skipped': 'PyTorch sees no CUDA device'}
  torch.backends.cudnn.benchmark = True  # As timm's train.py: conv algorithms by timing.
  batch, size = args.batch[0], args.mode.image_size
  net = timm.create_model(MODEL, num_classes=1000).cuda().to(memory_format=torch.channels_last)
  opt = torch.optim.RMSprop(net.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
  x = (torch.rand(batch, 3, size, size, device='cuda') * 2 - 1).contiguous(
      memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (batch,), device='cuda')
  forward = torch.compile(net) if args.timm_worker == 'compile' else net

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
      loss = torch.nn.functional.cross_entropy(forward(x), y, label_smoothing=0.1)
    loss.backward()
    opt.step()
    return loss

  wait = lambda _: torch.cuda.synchronize()
  first_step_s = run_steps(step, 1, wait)  # torch.compile compiles here.
  run_steps(step, args.warmup, wait)
  step_s = run_steps(step, args.steps, wait) / args.steps
  return {'first_step_s': round(first_step_s, 2), 'train_step_ms': round(1e3 * step_s, 2),
          'train_img_s': round(batch / step_s, 2),
          'peak_gb': torch.cuda.max_memory_allocated() / 1e9, 'torch': torch.__version__,
          'timm': timm.__version__, 'cudnn': torch.backends.cudnn.version()}


def _finite(x: float | None) -> float | None:
  return x if x is not None and math.isfinite(x) else None


# --- The plan, the budget and the report. -------------------------------------------

@dataclasses.dataclass(frozen=True)
class Part:
  """One measurement: what identifies its record, its kind of estimate, how to run it."""
  fields: dict[str, Any]
  kind: str
  run: Callable[[], dict[str, Any]]

  @property
  def name(self) -> str:
    return ' '.join(f'{k}={v:d}' if isinstance(v, bool) else f'{k}={v}'
                    for k, v in self.fields.items()).replace('part=', '')


def plan(args: argparse.Namespace) -> list[Part]:
  """The parts in order of importance: the first cell, the training, timm at the first
  batch, the first batch's other cells, then each other batch's cells and timm."""
  def cell(batch, scan):
    return Part({'part': 'jax', 'batch': batch, 'scan_blocks': scan},
                'jax_scanned' if scan else 'jax_unrolled',
                functools.partial(measure_cell, args, batch, scan))

  def timm(batch):
    return [Part({'part': 'timm', 'batch': batch, 'mode': mode}, f'timm_{mode}',
                 functools.partial(run_timm, args, batch, mode)) for mode in args.timm]

  first, *batches = args.batch
  parts = [cell(first, args.scan_blocks[0])]
  if args.train_steps:
    parts.append(Part({'part': 'train', 'batch': first, 'scan_blocks': args.scan_blocks[0]},
                      'train', functools.partial(run_training, args)))
  parts += timm(first) + [cell(first, scan) for scan in args.scan_blocks[1:]]
  for batch in batches:
    parts += [cell(batch, scan) for scan in args.scan_blocks] + timm(batch)
  return parts


class Clock:
  """Elapsed seconds against the budget; each kind of part's estimate, a prior until measured."""

  def __init__(self, budget_s: float, estimates: dict[str, float]):
    self.start, self.budget_s, self.estimates = time.perf_counter(), budget_s, dict(estimates)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def fits(self, kind: str) -> bool:
    return self.elapsed() + self.estimates[kind] <= self.budget_s

  def log(self, text: str) -> None:
    print(f'[{self.elapsed():6.1f} s] {text}', flush=True)


def print_plan(parts: Sequence[Part], clock: Clock) -> None:
  total = clock.elapsed()
  clock.log(f'plan, --budget_s={clock.budget_s:g} (estimates until a part of the kind is '
            'measured):')
  for i, part in enumerate(parts):
    total += clock.estimates[part.kind]
    note = 'always' if i == 0 else 'if time is left' if total > clock.budget_s else ''
    print(f'    {part.name:<40} ~{clock.estimates[part.kind]:4.0f} s, by ~{total:4.0f} s  {note}')


def run_parts(parts: Sequence[Part], clock: Clock, out: str) -> list[dict[str, Any]]:
  """Runs each part that fits the budget (the first always); appends its record to `out`."""
  records = []
  for i, part in enumerate(parts):
    estimate = clock.estimates[part.kind]
    if i and not clock.fits(part.kind):
      result = {'skipped': f'budget: ~{estimate:.0f} s needed, '
                           f'{max(0.0, clock.budget_s - clock.elapsed()):.0f} s left'}
    else:
      clock.log(f'{part.name}: ~{estimate:.0f} s')
      start = time.perf_counter()
      try:
        result = part.run()
      except Exception as e:  # pylint: disable=broad-except
        # One failure (an out-of-memory) must not lose the rest of a lent GPU's run.
        result = {'error': f'{type(e).__name__}: {e}'.replace('\n', ' ')[:500]}
      clock.estimates[part.kind] = time.perf_counter() - start
    record = {**part.fields, **result, 'elapsed_s': round(clock.elapsed(), 1)}
    clock.log(f'{part.name}: {describe(record)}')
    common.append_json(out, [record])
    records.append(record)
  return records


def describe(r: dict[str, Any]) -> str:
  """One line of a part's result."""
  if 'skipped' in r or 'error' in r:
    return f'skipped: {r["skipped"]}' if 'skipped' in r else f'FAILED: {r["error"]}'
  if r['part'] == 'train':
    return (f'loss {r["first_loss"]:.3f} -> {r["last_loss"]:.3f} over {r["train_steps"]} '
            f'steps ({"fell" if r["loss_fell"] else "DID NOT FALL"})')
  text = f'train {r["train_img_s"]:.1f} img/s'
  if r['part'] == 'timm':
    return f'{text}, first step {r["first_step_s"]:.1f} s, peak {r["peak_gb"]:.1f} GB'
  mfu = f', MFU {r["train_mfu"]:.1%}' if r['train_mfu'] is not None else ''
  return (f'compile {r["compile_s"]:.1f} s, {text}{mfu}, eval {r["eval_img_s"]:.1f} img/s, '
          f'peak {r["peak_gb"]:.2f} GB')


COLUMNS = (  # (heading, key, format)
    ('part', 'part', '{}'), ('batch', 'batch', '{}'), ('scan', 'scan_blocks', '{:d}'),
    ('timm mode', 'mode', '{}'), ('compile s', 'compile_s', '{:.1f}'),
    ('first step s', 'first_step_s', '{:.1f}'), ('train img/s', 'train_img_s', '{:.1f}'),
    ('eval img/s', 'eval_img_s', '{:.1f}'), ('train TFLOP/s', 'train_tflop_s', '{:.3g}'),
    ('train MFU', 'train_mfu', '{:.1%}'), ('eval MFU', 'eval_mfu', '{:.1%}'),
    ('XLA temp GB', 'xla_temp_gb', '{:.2f}'), ('peak GB', 'peak_gb', '{:.2f}'),
    ('first loss', 'first_loss', '{:.3f}'), ('last loss', 'last_loss', '{:.3f}'),
    ('cache hits', 'cache_hits', '{}'), ('note', 'note', '{}'))


def format_table(records: Sequence[dict[str, Any]]) -> str:
  rows = [{**r, 'note': r.get('skipped') or r.get('error')} for r in records]
  return common.markdown(common.table_rows(rows, COLUMNS))


def comparisons(records: Sequence[dict[str, Any]]) -> list[str]:
  """Ours against timm at each batch, the MFU goal, the training's verdict, the anchors."""
  lines = []
  ours = [r for r in records if r['part'] == 'jax' and 'train_img_s' in r]
  for batch in dict.fromkeys(r['batch'] for r in ours):
    best = max((r for r in ours if r['batch'] == batch), key=lambda r: r['train_img_s'])
    for t in records:
      if t['part'] == 'timm' and t['batch'] == batch and 'train_img_s' in t:
        ratio = best['train_img_s'] / t['train_img_s']
        lines.append(f'batch {batch}: ours (scan={best["scan_blocks"]:d}) '
                     f'{best["train_img_s"]:.1f} img/s = {ratio:.2f}x timm AMP channels_last '
                     f'{t["mode"]} ({t["train_img_s"]:.1f} img/s)')
  mfus = [r for r in ours if r['train_mfu'] is not None]
  if mfus:
    best = max(mfus, key=lambda r: r['train_mfu'])
    lines.append(f'best train MFU {best["train_mfu"]:.1%} (batch {best["batch"]}, scan='
                 f'{best["scan_blocks"]:d}); the goal on an H100 is >= {MFU_GOAL:.0%}: '
                 f'{"met" if best["train_mfu"] >= MFU_GOAL else "not met"}')
  lines += [f'training: {describe(r)}' for r in records if r['part'] == 'train']
  lines.append('anchors: timm publishes IR-v2 training at 358 img/s on an RTX 3090 (AMP, '
               'channels_last); MLPerf ResNet-50 reaches 18-27% MFU on A100/H100.')
  return lines


# --- Command line. ---------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--smoke', action='store_true',
                 help='CPU-sized: width 0.125, one block per stage, 75 px, batch 4, few steps')
  p.add_argument('--batch', type=list_of(int), default=None,
                 help='images per step, most important first (default 128,64; --smoke 4)')
  p.add_argument('--scan_blocks', type=list_of(bool_flag), default=[False, True],
                 help='unrolled and/or scanned blocks, most important first')
  p.add_argument('--timm', type=list_of(str, TIMM_MODES + ('none',)), default=list(TIMM_MODES),
                 help='timm modes beside ours (AMP, channels_last); none skips timm')
  p.add_argument('--steps', type=int, default=None, help='timed steps (default 20; --smoke 3)')
  p.add_argument('--warmup', type=int, default=None,
                 help='untimed steps before them (default 3; --smoke 1)')
  p.add_argument('--train_steps', type=int, default=None,
                 help='steps of the training whose loss must fall (default 200; --smoke 30); '
                      '0 skips it')
  p.add_argument('--budget_s', type=float, default=450.0,
                 help='parts after the first start only if their estimate fits in this')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help='the device\'s dense bf16 peak for MFU (default: inception_jax/hardware.py '
                      'by device kind, e.g. 756 for an H100 PCIe it does not list)')
  p.add_argument('--cache_dir', default='~/.cache/inception_jax/gpu_check',
                 help='persistent compilation cache; a compile found there is a load '
                      '(cache_hits in the record); empty: a fresh folder, removed at the end')
  p.add_argument('--wheels', default=WHEELS, help='where missing packages are installed from')
  p.add_argument('--out', default='', help='append one JSON line per part to this file')
  p.add_argument('--timm_worker', choices=TIMM_MODES, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.mode = SMOKE if args.smoke else FULL
  for name, default in (('batch', list(args.mode.batch)), ('steps', args.mode.steps),
                        ('warmup', args.mode.warmup), ('train_steps', args.mode.train_steps)):
    if getattr(args, name) is None:
      setattr(args, name, default)
  args.timm = [m for m in args.timm if m != 'none']
  group = args.mode.bn_group_size
  if any(b <= 0 or b % group for b in args.batch):
    p.error(f'--batch={",".join(map(str, args.batch))}: each must be a positive multiple of '
            f'the BatchNorm group ({group} images)')
  for name, least in (('steps', 1), ('warmup', 0), ('train_steps', 0), ('peak_tflops', 0)):
    if getattr(args, name) < least:
      p.error(f'--{name}={getattr(args, name):g} must be >= {least}')
  if not args.budget_s > 0:
    p.error(f'--budget_s={args.budget_s:g} must be > 0')
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.timm_worker:
    print(json.dumps(measure_timm(args)), flush=True)
    return 0
  clock = Clock(args.budget_s, args.mode.estimates)
  # Grown on demand, so that timm's process finds the memory our steps do not hold.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  try:
    tensorflow_by = import_all(TIMED_MODULES, args.wheels)
  except ImportError as e:
    raise SystemExit(f'error: {e}') from None
  cache_dir = use_compilation_cache(args.cache_dir)
  host = versions(tensorflow_by)
  common.append_json(args.out, [host])
  clock.log(' | '.join(f'{k} {v}' for k, v in host.items() if v is not None and k not in (
      'part', 'env')))
  if peak_flops(args) is None:
    clock.log(f'inception_jax/hardware.py has no peak for {host["device"]!r}: no MFU unless '
              '--peak_tflops gives it')
  parts = plan(args)
  print_plan(parts, clock)
  records = run_parts(parts, clock, args.out)
  print(format_table(records))
  print('\n'.join(comparisons(records)))
  clock.log('done')
  if not args.cache_dir:
    shutil.rmtree(cache_dir, ignore_errors=True)
  failed = any('error' in r or r.get('loss_fell') is False for r in records)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
