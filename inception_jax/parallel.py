"""The one place that builds meshes and shardings: data parallelism over every device.

Params are replicated and each batch is split along the `data` axis; under `jit`
XLA inserts the gradient all-reduce, and BatchNorm statistics are those of the
whole global batch.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from inception_jax import checkpointing, hugepages

# What says that this may be one process of several: a launcher's variables (an explicit
# coordinator, SLURM, Open MPI, a GKE TPU or JobSet pod), or a Cloud TPU VM's chips, whose
# peers JAX finds from the VM's metadata. JAX's own cluster detection takes it from there.
_LAUNCHER_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE',
                 'TPU_WORKER_HOSTNAMES', 'JOBSET_NAME')
_TPU_CHIPS = hugepages.DEVICE_NODES['tpu']  # A Cloud TPU VM's chips.


def cluster_hint(env: dict[str, str] | None = None,
                 tpu_chips: Sequence[str] = _TPU_CHIPS) -> str | None:
  """What suggests a multi-process launch here (a variable or 'a TPU VM'), or None."""
  env = os.environ if env is None else env
  if env.get('SLURM_NTASKS') == '1':
    return None  # One SLURM task: nothing to coordinate.
  found = next((k for k in _LAUNCHER_ENV if env.get(k)), None)
  if found is None and any(glob.glob(p) for p in tpu_chips):
    found = 'a TPU VM'
  return found


def maybe_initialize_distributed(mode: str | bool, timeout_s: int = 300,
                                 heartbeat_timeout_s: int = 100) -> None:
  """Calls `jax.distributed.initialize` when asked to, or when a launch looks multi-process.

  `mode`: True/'true' (always), False/'false' (never), 'auto' (when `cluster_hint`
  finds one). JAX's cluster detection then finds the coordinator, the process count
  and this process's id: SLURM, Open MPI, Cloud TPU VMs and GKE. Without a cluster
  launcher, set `JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`. Must run before anything touches devices. `timeout_s` bounds the
  wait for peers at start; a peer silent for `heartbeat_timeout_s` stops every process.
  """
  mode = str(mode).lower()
  if mode not in ('auto', 'true', 'false'):
    raise ValueError(f'distributed={mode!r} is invalid; use auto, true or false')
  hint = cluster_hint()
  if mode == 'false' or (mode == 'auto' and hint is None):
    return
  explicit = {key: int(os.environ[var]) for key, var in
              (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID'))
              if os.environ.get(var)}
  jax.distributed.initialize(initialization_timeout=timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s, **explicit)
  logging.info('jax.distributed (%s): process %d of %d', hint or 'distributed=true',
               jax.process_index(), jax.process_count())


COMPILE_BARRIER_TIMEOUT_S = 30 * 60  # The slowest host's compile of a full network.


def compile_and_sync(jitted: Any, name: str, *args: Any) -> tuple[Any, Any]:
  """(lowered, compiled) `jitted` for `args` (arrays or shape structs); then every process
  waits for the others.

  CPU collectives (gloo) give a peer 30 s to join a computation's first collective:
  processes that compile at different speeds (a loaded host) fail there, and a device
  collective as the barrier (`multihost_utils.sync_global_devices`) fails the same way
  (a 50 s skew: "Gloo context initialization failed: DEADLINE_EXCEEDED"). The
  coordination service's barrier has no such window. GPU and TPU collectives wait for
  their peers, and one process has none to wait for: no barrier there.
  """
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  if jax.process_count() > 1 and jax.devices()[0].platform == 'cpu':
    checkpointing.wait_for_processes(f'compiled_{name}', COMPILE_BARRIER_TIMEOUT_S)
  return lowered, compiled


def abstract(tree: Any, sharding: NamedSharding) -> Any:
  """Shape structs of `tree` (arrays or structs) placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-axis mesh over all devices of all processes (or the given ones)."""
  devices = list(devices) if devices is not None else jax.devices()
  return Mesh(np.asarray(devices), ('data',), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of a global batch; raises if it does not split evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(f'batch_size={global_batch_size} is not divisible by the number of '
                     f'devices ({num_devices}); use a multiple of {num_devices}')
  return global_batch_size * _local_device_count(mesh) // num_devices


def _local_device_count(mesh: Mesh) -> int:
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> one global array per key, split along `data`."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
