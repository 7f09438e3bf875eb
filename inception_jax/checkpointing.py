"""The one place that knows orbax: run checkpoints (train state) and weight files.

A run checkpoint holds the whole train state (params, batch stats, optimizer
state, EMA, step); the data stream is step-indexed, so the step alone continues
it. Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a save cut short never replaces the last good one.
"""

from __future__ import annotations

import contextlib
import gc
import logging as pylogging
import os
import sys
import traceback
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def _hide_orbax_info(record: pylogging.LogRecord) -> bool:
  # Orbax logs dozens of INFO lines per save; its warnings and errors still show.
  return record.levelno >= pylogging.WARNING or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_hide_orbax_info)


def _hide_aborted_reads(record: pylogging.LogRecord) -> bool:
  # The reads of a failed restore that were in flight: asyncio reports each of their tasks
  # and futures with a traceback when it is collected, which can be long after the restore
  # (`_quiet_aborted_restores`); the failure is reported once, by `restore_newest_readable`.
  message = record.getMessage()
  if 'exception was never retrieved' not in message:
    return True
  if record.exc_info:
    message += ''.join(traceback.format_exception(*record.exc_info))
  return not any(mark in message for mark in ('/orbax/', 'OCDBT', 'tensorstore'))


pylogging.getLogger('asyncio').addFilter(_hide_aborted_reads)


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as what it should hold."""


def _root_cause(error: BaseException) -> str:
  """`error`'s innermost cause on one line, without the TensorStore specs (dozens of
  lines) that orbax and tensorstore append to their messages."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split('\n', 1)[0].split(' [tensorstore_spec', 1)[0]
  return f'{type(error).__name__}: {text}'


def _left_by_an_aborted_restore(unraisable: sys.UnraisableHookArgs) -> bool:
  if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed':
    return True  # A read still in flight reporting to the failed restore's closed loop.
  code = getattr(unraisable.object, 'cr_code', None)  # One of its coroutines, collected.
  return code is not None and '/orbax/' in code.co_filename


@contextlib.contextmanager
def _quiet_aborted_restores() -> Iterator[None]:
  """Drops the tracebacks a failed restore leaves behind, while the block runs.

  When one file of a checkpoint is unreadable, orbax raises at the first failed read and
  closes its event loop with the other reads in flight. Each of those prints a traceback,
  hundreds for a train state, as an unraisable exception: when it completes (its callback
  finds the loop closed) and when its coroutine is collected (orbax turns the
  GeneratorExit into an error). The failure is reported once, by the caller.
  """
  previous = sys.unraisablehook
  def hook(unraisable: sys.UnraisableHookArgs) -> None:
    if not _left_by_an_aborted_restore(unraisable):
      previous(unraisable)
  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of `tree`: the restore target (any device count)."""
  def leaf(x):
    sharding = getattr(x, 'sharding', None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


class RunCheckpoints:
  """Periodic async saves of a train state with keep-N, restore of the newest one."""

  def __init__(self, directory: str, *, every_steps: int, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, every_steps), max_to_keep=max_to_keep, create=True,
        cleanup_tmp_directories=True)
    self._open = lambda: ocp.CheckpointManager(self.directory, options=options)
    self._manager = self._open()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the newest complete one) into the structure of `template`."""
    return self._restore(step, ocp.args.StandardRestore(_abstract(template)))

  def restore_newest_readable(self, *templates: Any) -> tuple[Any, int]:
    """The newest checkpoint that restores, and the index of the template it restored into.

    Each step is tried with `templates` in turn (e.g. one train state per optimizer
    layout). A directory that restores into none of them (cut short by a disk, a foreign
    copy) is renamed to `<step>.unreadable`, kept for the user to look at, with a warning
    naming it, so that the run continues from the newest good checkpoint and later saves
    are not shadowed by the bad step. With no readable checkpoint nothing is moved and
    the newest one's error (under the first template) is raised.
    """
    moved, first_error, found = [], None, None
    with _quiet_aborted_restores():
      for step in sorted(self.all_steps(), reverse=True):
        found, errors = self._restore_any(templates, step)
        if found is not None:
          break
        first_error = first_error or errors[0][0]
        path = os.path.join(self.directory, str(step))
        os.rename(path, path + '.unreadable')  # Out of orbax's sight: it reads every step.
        self._reopen()
        moved.append((path, errors[0][1]))
      if moved:  # Those coroutines report when collected: now, while that is quiet.
        gc.collect()
    if found is None:
      for path, _ in moved:
        os.rename(path + '.unreadable', path)
      self._reopen()
      raise CheckpointError(first_error)
    for path, reason in moved:
      logging.warning('Checkpoint %s is unreadable (%s); moved to %s.unreadable, resuming '
                      'from step %d.', path, reason, path, step)
    return found

  def _restore_any(self, templates: tuple[Any, ...], step: int
                   ) -> tuple[tuple[Any, int] | None, list[tuple[str, str]]]:
    """(state, index) of the first template `step` restores into, else each one's
    (message, root cause): text only, as the exception keeps the failed restore's
    coroutines alive."""
    errors = []
    for index, template in enumerate(templates):
      try:
        return (self.restore(template, step), index), errors
      except CheckpointError as e:
        errors.append((str(e), _root_cause(e)))
        self._reopen()  # A manager that tried a foreign directory keeps its guess of the items.
    return None, errors

  def _reopen(self) -> None:
    self._manager.close()
    self._manager = self._open()

  def restore_subset(self, template: Any, step: int | None = None) -> Any:
    """Restores only the top-level entries of `template` that it names.

    E.g. `{'params', 'batch_stats', 'ema_params'}` of a train state, without reading
    its optimizer state (evaluation). Leaves of `template` must carry shardings.
    """
    abstract = _abstract(template)
    return self._restore(step, ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True))

  def _restore(self, step: int | None, args: Any) -> Any:
    step = self.latest_step() if step is None else step
    try:
      return self._manager.restore(step, args=args)
    except Exception as e:  # orbax raises many kinds; the user needs the directory.
      raise CheckpointError(
          f'cannot restore step {step} from {self.directory}: {_root_cause(e)}. '
          'It is corrupt or was written by a different model/config; move it away or '
          'use another --workdir.') from e

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves asynchronously when `step` is due (or `force`); returns whether it saved."""
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def reached_preemption(self, step: int) -> bool:
    """True on every process once a preemption notice (SIGTERM) has been received."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def wait_for_processes(name: str, timeout_s: int) -> None:
  """Blocks until every process has reached the barrier `name` (each name used once).

  The coordination service's barrier, through orbax's public API: no device
  collective, so no collective library's join deadline applies.
  """
  ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def save_variables(directory: str, variables: dict[str, Any]) -> None:
  """Writes model variables (`params`, `batch_stats`) as one orbax checkpoint."""
  directory = os.path.abspath(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, variables, force=True)
  checkpointer.wait_until_finished()
  logging.info('Wrote variables to %s', directory)


def load_variables(directory: str, template: dict[str, Any] | None = None) -> dict[str, Any]:
  """Reads variables written by `save_variables` (or a run's checkpoint step dir).

  With `template` (e.g. `jax.eval_shape` of `model.init`), leaves come back with its
  shapes and shardings; without it, as stored.
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'no checkpoint directory at {directory}')
  try:
    if template is None:  # As numpy arrays: readable whatever devices wrote it.
      checkpointer = ocp.PyTreeCheckpointer()
      stored = checkpointer.metadata(directory).item_metadata.tree
      return checkpointer.restore(directory, restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored))
    return ocp.StandardCheckpointer().restore(directory, _abstract(template))
  except Exception as e:
    raise CheckpointError(f'cannot read variables from {directory}: {type(e).__name__}: {e}') from e
