"""The real train and eval steps compiled for a TPU slice or a GPU node, without the hardware.

XLA compiles a jitted step for a target's devices ("deviceless AOT": libtpu's topologies
for TPU, the CUDA plugin with a target description for NVIDIA GPUs); the compiled
object then says what a step needs there: memory per device, FLOPs and bytes accessed
(TPU), the collectives and their dtypes, the kernels. `benchmarks/aot.py` prints it;
the tests assert on it. The extra installs are `requirements-tpu.txt` and
`requirements-cuda.txt`, never the CPU install.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import time
from typing import Any, Sequence

import jax
import ml_collections
from jax.experimental import topologies

from inception_jax import hardware, ops, optim, parallel, steps
from inception_jax.models import Inception

TPU_GENERATIONS = ('v4', 'v5e', 'v5p', 'v6e')
GPU_GENERATIONS = ('h100',)
TARGETS_HELP = ('cpu, a TPU topology <generation>:<chips> with generation one of '
                f'{", ".join(TPU_GENERATIONS)} (e.g. v5e:2x2, v5p:2x2x1, v4:2x2x1, v6e:2x2), '
                'or an NVIDIA node h100:<hosts>x<nodes>x<GPUs> (h100:1x1x1, h100:1x1x8)')
# XLA's device description of an H100 SXM (its spec for that GPU), the target config the
# CUDA plugin compiles for; on a real GPU, `get_topology_for_devices(...).target_config`.
H100_TARGET_CONFIG = '''gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
device_description_str: "NVIDIA H100 80GB HBM3"
'''
INSTALL = {'tpu': 'pip install -r requirements-tpu.txt',
           'gpu': 'pip install -r requirements-cuda.txt'}
PLUGINS = {'tpu': 'libtpu', 'gpu': 'jax_cuda12_plugin'}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2,
                'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def parse_target(target: str) -> tuple[str, str | None]:
  """'v5e:2x2' -> ('v5e', '2x2'); 'cpu' -> ('cpu', None). A ValueError lists what is valid."""
  if target == 'cpu':
    return 'cpu', None
  generation, _, shape = target.partition(':')
  if (generation not in TPU_GENERATIONS + GPU_GENERATIONS or
      not re.fullmatch(r'\d+(x\d+){1,2}', shape) or
      (generation in GPU_GENERATIONS and shape.count('x') != 2)):
    raise ValueError(f'target={target!r} is invalid; valid: {TARGETS_HELP}')
  return generation, shape


def platform(target: str) -> str:
  generation, _ = parse_target(target)
  return 'cpu' if generation == 'cpu' else 'gpu' if generation in GPU_GENERATIONS else 'tpu'


def target_devices(target: str) -> list[jax.Device]:
  """The (compile-only, for TPU and GPU) devices of `target`."""
  generation, shape = parse_target(target)
  if generation == 'cpu':
    return jax.devices('cpu')
  kind = platform(target)
  try:
    if kind == 'tpu':
      # libtpu's lockfile guards the chips, which a topology does not use: without this,
      # a second compile on the host (a benchmark beside the tests) fails to start.
      os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
      return list(topologies.get_topology_desc(topology_name=f'{generation}:{shape}',
                                               platform='tpu').devices)
    return list(topologies.get_topology_desc(platform='cuda', topology=shape,
                                             target_config=H100_TARGET_CONFIG).devices)
  except Exception as e:  # The plugin's own kinds: missing, or no such topology.
    hint = '' if importlib.util.find_spec(PLUGINS[kind]) else f'; it needs `{INSTALL[kind]}`'
    raise ValueError(f'cannot compile for {target}: {type(e).__name__}: '
                     f'{" ".join(str(e).split())[:300]}{hint}') from e


@dataclasses.dataclass
class Compiled:
  """One step compiled for a target, with what it took."""
  name: str              # 'train' or 'eval'
  executable: Any        # jax.stages.Compiled
  lowered: Any           # jax.stages.Lowered
  lower_s: float
  compile_s: float
  compile_cpu_s: float   # of every thread of this process: what more cores could spread
  flops: float           # of the whole step (all devices), from its HLO


def compile_steps(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                  num_classes: int = 1000, names: Sequence[str] = ('train', 'eval'),
                  ) -> tuple[Inception, list[Compiled]]:
  """`steps.train_step` and `steps.eval_step` of `config`, compiled for `devices`.

  The model's kernel set is resolved for the devices' platform (`model.kernels='auto'`);
  the state and the batch are abstract, sharded as in training (`batch_size` global).
  """
  model = steps.create_model_from_config(config, num_classes, ops.platform_of(devices))
  mesh = parallel.create_mesh(devices)
  tx = optim.create_optimizer(config, optim.create_schedule(config, 5000),
                              model.kernel_set.flat_updates)
  state = jax.eval_shape(functools.partial(steps.create_train_state, model, config, tx))
  state = parallel.abstract(state, parallel.replicated(mesh))
  fns = {'train': (functools.partial(steps.train_step, model=model, config=config, tx=tx,
                                     shards=len(devices)), config.batch_size),
         'eval': (functools.partial(steps.eval_step, model=model), config.eval_batch_size)}
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  out = []
  for name in names:
    fn, batch_size = fns[name]
    batch = parallel.abstract(steps.batch_spec(config, batch_size), sharded)
    jitted = jax.jit(fn, in_shardings=(replicated, sharded), compiler_options=model.compiler_options,
                     **(dict(out_shardings=(replicated, replicated), donate_argnums=(0,))
                        if name == 'train' else {}))
    start = time.perf_counter()
    lowered = jitted.lower(state, batch)
    lowered_at, cpu_at = time.perf_counter(), time.process_time()
    executable = lowered.compile()
    compiled_at, cpu_s = time.perf_counter(), time.process_time() - cpu_at
    # XLA:GPU has no cost analysis without a device; the step's HLO lowered for this
    # host's CPU has the same FLOPs.
    flops = (lowered.cost_analysis() or jax.jit(fn).lower(
        *jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    ).cost_analysis() or {}).get('flops', 0.0)
    out.append(Compiled(name, executable, lowered, lowered_at - start,
                        compiled_at - lowered_at, cpu_s, float(flops)))
  return model, out


def collectives(hlo: str) -> dict[str, dict[str, Any]]:
  """{kind: {'ops': n, 'dtypes': {dtype: {'tensors': k, 'bytes': b}}}} of optimized HLO text.

  An async pair (`all-reduce-start` / `-done`) counts once, at its start. XLA combines
  many reductions into one tuple-shaped collective: that is one op, carrying each of its
  tensors (`tensors`, `bytes` per dtype).
  """
  found: dict[str, dict[str, Any]] = {}
  kinds = '|'.join(COLLECTIVES)
  pattern = re.compile(r'^\s*%?[\w.-]+\s*=\s*(.*?)\s+(' + kinds + r')(?:-start)?\(')
  for line in hlo.splitlines():
    match = pattern.match(re.sub(r'/\*.*?\*/', '', line))  # Drop /*index=5*/ comments.
    if not match:
      continue
    result, kind = match.groups()
    entry = found.setdefault(kind, {'ops': 0, 'dtypes': {}})
    entry['ops'] += 1
    for dtype, dims in re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', result):
      if dtype not in _DTYPE_BYTES:
        continue
      size = math.prod(int(d) for d in dims.split(',') if d) * _DTYPE_BYTES[dtype]
      tensors = entry['dtypes'].setdefault(dtype, {'tensors': 0, 'bytes': 0})
      tensors['tensors'] += 1
      tensors['bytes'] += size
  return found


def host_cores() -> list[int]:
  """The cores this process may run on (where it cannot be pinned, all of them)."""
  if hasattr(os, 'sched_getaffinity'):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def analyze(step: Compiled, devices: Sequence[jax.Device], batch_size: int) -> dict[str, Any]:
  """Per device: memory, FLOPs, bytes accessed, a roofline, the collectives and kernels."""
  n = len(devices)
  memory = step.executable.memory_analysis()
  cost = step.executable.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) or step.flops / n
  # XLA:GPU gives no cost analysis without a device, so no bytes accessed there.
  accessed = float(cost.get('bytes accessed', 0.0)) or float('nan')
  hlo = step.executable.as_text()
  spec = hardware.CHIPS.get(devices[0].device_kind)
  per_device = batch_size / n
  record = {
      'step': step.name, 'devices': n, 'device_kind': devices[0].device_kind,
      'per_device_batch': per_device, 'lower_s': round(step.lower_s, 1),
      'compile_s': round(step.compile_s, 1), 'compile_cpu_s': round(step.compile_cpu_s, 1),
      # The compile's seconds scale with the host's cores.
      'host_cores': len(host_cores()),
      'argument_gb': memory.argument_size_in_bytes / 1e9,
      'output_gb': memory.output_size_in_bytes / 1e9,
      'alias_gb': memory.alias_size_in_bytes / 1e9,
      'temp_gb': memory.temp_size_in_bytes / 1e9,
      'gflop': flops / 1e9, 'gflop_per_image': flops / per_device / 1e9,
      'gb_accessed': accessed / 1e9, 'mb_accessed_per_image': accessed / per_device / 1e6,
      'flop_per_byte': flops / accessed if accessed else float('nan'),
      'collectives': collectives(hlo),
      'fusions': len(re.findall(r'^\s*\S+ = \S+ fusion\(', hlo, re.M)),
      'custom_calls': len(re.findall(r' custom-call\(', hlo)),
      # Values that memory-space assignment placed in on-chip memory (layout `S(1)`),
      # prefetches included: none when the compile effort is lowered (benchmarks/README.md).
      'on_chip_values': len(re.findall(r'^\s*(?:ROOT )?\S+ = \S*S\(1\)', hlo, re.M)),
      'exec_time_optimization_effort': jax.config.jax_exec_time_optimization_effort,
      'optimization_level': str(jax.config.jax_optimization_level),
  }
  record['hbm_gb'] = (record['argument_gb'] + record['output_gb'] - record['alias_gb'] +
                      record['temp_gb'])
  if spec is not None and accessed == accessed:
    seconds = max(flops / spec.peak_flops, accessed / spec.hbm_bytes_s)
    record['roofline_img_s'] = per_device / seconds if seconds else float('nan')
    record['ridge_flop_per_byte'] = spec.ridge
  if spec is not None:
    record['fits'] = record['hbm_gb'] * 1e9 <= spec.hbm_bytes
  return record


def collective_count(record: dict[str, Any], kind: str = 'all-reduce') -> int:
  """How many `kind` ops a step runs (a combined, tuple-shaped one counts once)."""
  return int(record['collectives'].get(kind, {}).get('ops', 0))


def reduced_dtypes(record: dict[str, Any]) -> set[str]:
  """The dtypes that the step's all-reduces carry."""
  return set(record['collectives'].get('all-reduce', {}).get('dtypes', {}))
