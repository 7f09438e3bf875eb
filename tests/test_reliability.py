"""Reliability of real runs: SIGKILL and SIGTERM, torn and corrupt checkpoints, NaN, peers.

Most tests run `main.py` in subprocesses, as a user (or a preemptible cluster) would.
"""

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from inception_jax import checkpointing, parallel, train
from tests.util import REPO, main_command, subprocess_env, tiny_config

NUM_STEPS = 8


def _final_state(workdir: str, step: int = NUM_STEPS) -> dict:
  """Everything a run saved at `step` (params, optimizer, EMA, batch stats), as numpy."""
  return checkpointing.load_variables(os.path.join(workdir, 'checkpoints', str(step), 'default'))


def _start(config, workdir: str, name: str = 'stdout', **env) -> subprocess.Popen:
  """Starts `main.py`; its output goes to `<workdir>/<name>.log` (a pipe could fill up)."""
  os.makedirs(workdir, exist_ok=True)
  log = open(os.path.join(workdir, f'{name}.log'), 'w')  # pylint: disable=consider-using-with
  proc = subprocess.Popen(main_command(config, workdir), env=subprocess_env(**env), cwd=REPO,
                          stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log_path = log.name
  return proc


def _finish(proc: subprocess.Popen, timeout_s: float = 900) -> str:
  proc.wait(timeout=timeout_s)
  with open(proc.log_path) as f:
    return f.read()


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout_s: float = 600) -> None:
  """Polls `condition()` every few ms; fails if `proc` exits first."""
  deadline = time.time() + timeout_s
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f'the run ended (rc {proc.returncode}) before {what}:\n{_finish(proc)[-3000:]}')
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f'timed out waiting for {what}')
    time.sleep(0.002)


def _checkpoint_entries(workdir: str) -> list[str]:
  try:
    return os.listdir(os.path.join(workdir, 'checkpoints'))
  except FileNotFoundError:
    return []


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tiny_data_dir):
  config = tiny_config(tiny_data_dir, num_train_steps=NUM_STEPS)
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  proc = _start(config, workdir)
  out = _finish(proc)
  assert proc.returncode == 0, out[-3000:]
  return config, _final_state(workdir)


@pytest.mark.parametrize('moment', ['between_saves', 'during_a_save'])
def test_sigkill_and_rerun_equals_uninterrupted_run(moment, uninterrupted, tmp_path):
  config, expected = uninterrupted
  workdir = str(tmp_path)
  proc = _start(config, workdir)
  if moment == 'between_saves':  # Step 2 committed; killed while computing the next steps.
    _wait_for(lambda: '2' in _checkpoint_entries(workdir), proc, 'checkpoint 2')
  else:  # Orbax writes into '<step>.orbax-checkpoint-tmp*' and renames it when complete.
    _wait_for(lambda: any('tmp' in e for e in _checkpoint_entries(workdir)), proc,
              'a checkpoint being written')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert NUM_STEPS != max([int(e) for e in _checkpoint_entries(workdir) if e.isdigit()],
                          default=0)
  # The same command again: it resumes from the newest complete checkpoint.
  proc = _start(config, workdir, name='rerun')
  out = _finish(proc)
  assert proc.returncode == 0, out[-3000:]
  jax.tree.map(np.testing.assert_array_equal, _final_state(workdir), expected)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_data_dir):
  config = tiny_config(tiny_data_dir, num_train_steps=100_000, checkpoint_every_steps=10_000,
                       eval_every_steps=10_000)
  workdir = str(tmp_path)
  proc = _start(config, workdir)
  _wait_for(lambda: os.path.exists(os.path.join(workdir, 'metrics.jsonl')), proc,
            'the first logged step')
  proc.send_signal(signal.SIGTERM)
  sent = time.time()
  out = _finish(proc, timeout_s=120)
  assert proc.returncode == 0, out[-3000:]
  assert time.time() - sent < 60  # One step, one save.
  stopped = int(re.search(r'Stopped for preemption at step (\d+)', out).group(1))
  assert stopped >= 2
  assert checkpointing.RunCheckpoints(os.path.join(workdir, 'checkpoints'),
                                      every_steps=1).all_steps() == [stopped]


def test_torn_write_is_ignored_and_an_unreadable_checkpoint_is_moved_aside(tmp_path,
                                                                           tiny_data_dir):
  workdir = str(tmp_path)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  train.train_and_evaluate(tiny_config(tiny_data_dir, num_train_steps=2), workdir)
  # A save cut short by a crash leaves only a temporary directory behind.
  torn = os.path.join(ckpt_dir, '4.orbax-checkpoint-tmp-1234567')
  os.makedirs(os.path.join(torn, 'default'))
  with open(os.path.join(torn, 'default', 'manifest.ocdbt'), 'wb') as f:
    f.write(b'\0' * 10)
  state = train.train_and_evaluate(tiny_config(tiny_data_dir, num_train_steps=4), workdir)
  assert int(state.step) == 4 and not os.path.exists(torn)
  # A step directory that is not a checkpoint of this run.
  foreign = os.path.join(ckpt_dir, '9')
  os.makedirs(foreign)
  with open(os.path.join(foreign, 'notes.txt'), 'w') as f:
    f.write('not a checkpoint')
  with absltest_log() as warnings:
    state = train.train_and_evaluate(tiny_config(tiny_data_dir, num_train_steps=8), workdir)
  # Resumed from step 4, the newest readable one; the bad directory is kept, renamed.
  assert int(state.step) == 8
  assert any(f'{foreign} is unreadable' in w and f'{foreign}.unreadable' in w
             for w in warnings), warnings
  assert os.path.exists(os.path.join(foreign + '.unreadable', 'notes.txt'))
  steps = checkpointing.RunCheckpoints(ckpt_dir, every_steps=1).all_steps()
  assert 9 not in steps and 8 in steps and 6 in steps  # Later saves were not shadowed.
  # With no readable checkpoint at all the run stops, naming it.
  only = tmp_path / 'only' / 'checkpoints' / '3'
  only.mkdir(parents=True)
  (only / 'notes.txt').write_text('not a checkpoint')
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(str(only.parent))) as e:
    train.train_and_evaluate(tiny_config(tiny_data_dir), str(tmp_path / 'only'))
  assert 'step 3' in str(e.value)


@contextlib.contextmanager
def absltest_log():
  """The warnings absl logs meanwhile, as strings."""
  messages = []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  handler.setLevel(logging.WARNING)
  absl_logging.get_absl_logger().addHandler(handler)
  try:
    yield messages
  finally:
    absl_logging.get_absl_logger().removeHandler(handler)


def test_nonfinite_stop_names_the_step_and_never_saves_nan(tmp_path, tiny_data_dir):
  # lr 1e30: the first update sends the weights to ~1e29, the next loss is not finite.
  config = tiny_config(tiny_data_dir, learning_rate=1e30, nonfinite_policy='stop',
                       checkpoint_every_steps=1)
  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  match = re.search(r'non-finite loss at step (\d+); the last good checkpoint is step (\d+)',
                    str(e.value))
  assert match, str(e.value)
  bad_step, last_good = int(match.group(1)), int(match.group(2))
  assert last_good == bad_step - 1
  params = _final_state(str(tmp_path), last_good)['params']
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two_processes(config, workdir: str, name: str,
                         launcher: str = 'explicit') -> list[subprocess.Popen]:
  """Two processes of 2 devices each, told of each other as a user would (`explicit`) or
  as SLURM tells them (`slurm`: JAX's own cluster detection finds the coordinator)."""
  port = str(_free_port())
  def env(i):
    if launcher == 'slurm':
      return dict(SLURM_JOB_ID='1', SLURM_STEP_NODELIST='127.0.0.1', SLURM_NTASKS='2',
                  SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=port)
    return dict(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                JAX_PROCESS_ID=str(i))
  return [_start(config, workdir, f'{name}{i}', num_devices=2, **env(i)) for i in range(2)]


def _metric_lines(workdir: str) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def test_two_processes_train_agree_and_stop_when_a_peer_dies(tmp_path, tiny_data_dir):
  workdir = str(tmp_path)
  config = tiny_config(tiny_data_dir, num_train_steps=4, distributed_heartbeat_timeout_s=10)
  procs = _start_two_processes(config, workdir, 'first', launcher='slurm')
  outs = [_finish(p) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert all(f'JAX process {i}/2' in out for i, out in enumerate(outs))
  checksums = [re.search(r'Finished at step 4; parameter checksum (\S+)', out).group(1)
               for out in outs]
  assert checksums[0] == checksums[1]
  assert _final_state(workdir, 4)['step'] == 4

  # Resume both for longer, then kill one: the other must stop, not wait forever on a
  # collective with a dead peer.
  config.num_train_steps = 10_000
  logged = _metric_lines(workdir)
  procs = _start_two_processes(config, workdir, 'second')
  _wait_for(lambda: _metric_lines(workdir) > logged, procs[0], 'training to resume')
  procs[1].kill()
  killed = time.time()
  out = _finish(procs[0], timeout_s=300)
  assert procs[0].returncode != 0
  assert time.time() - killed < 120  # Heartbeat timeout 10 s, plus detection and teardown.
  assert 'another task died' in out


def test_two_processes_train_as_one_on_the_same_global_batches(tmp_path):
  """2 processes of 2 devices and 1 process of 4, on the same global batches
  (`dataset='synthetic'` makes them on the devices): the same parameters after 3 updates."""
  config = tiny_config(tmp_path, dataset='synthetic', num_train_steps=3, log_every_steps=3,
                       eval_every_steps=3, steps_per_eval=1, checkpoint_every_steps=3)
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  procs = _start_two_processes(config, two, 'run') + [_start(config, one, num_devices=4)]
  outs = [_finish(p) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], '\n'.join(o[-2000:] for o in outs)
  a, b = _final_state(two, 3), _final_state(one, 3)
  assert a['step'] == b['step'] == 3
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               a['params'], b['params'])


def test_cluster_hint_names_what_makes_a_launch_look_multi_process(tmp_path):
  """`distributed=auto` initializes jax.distributed (and its cluster detection) on these."""
  assert parallel.cluster_hint({}, ()) is None
  assert parallel.cluster_hint({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, ()) == 'SLURM_JOB_ID'
  assert parallel.cluster_hint({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, ()) is None
  assert parallel.cluster_hint({'TPU_WORKER_HOSTNAMES': 'a,b'}, ()) == 'TPU_WORKER_HOSTNAMES'
  (tmp_path / 'accel0').write_text('')  # A Cloud TPU VM's chip: peers come from its metadata.
  assert parallel.cluster_hint({}, (str(tmp_path / 'accel[0-9]*'),)) == 'a TPU VM'
