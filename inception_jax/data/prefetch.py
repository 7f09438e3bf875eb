"""Batches moved to the devices ahead of the step that needs them, from a background thread.

While the devices run step k, a thread takes host batch k + 1 (and k + 2) from the
input pipeline and transfers it (`parallel.to_global`), so a step waits for data only
when the pipeline itself is slower than the devices. The time `next` blocks is what the
training log reports as data wait.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

from absl import logging

_DONE = object()


class Prefetcher:
  """An iterator over `transfer(batch)` for the batches of `batches`, `depth` ahead.

  An exception in the thread (a corrupt shard, say) is raised by `next` in the
  caller's thread; the end of `batches` ends this iterator.
  """

  def __init__(self, batches: Iterator[Any], transfer: Callable[[Any], Any], depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self.wait_s = 0.0  # Time the last `next` blocked.
    self._thread = threading.Thread(target=self._fill, args=(batches, transfer), daemon=True,
                                    name='Prefetcher')
    self._thread.start()

  def _fill(self, batches, transfer) -> None:
    try:
      for batch in batches:
        if not self._put(transfer(batch)):
          return
      self._put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def _put(self, item: Any) -> bool:
    """Queues `item` unless closed first; a full queue is retried so that `close` ends it."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self) -> Prefetcher:
    return self

  def __next__(self) -> Any:
    start = time.perf_counter()
    item = self._queue.get()
    self.wait_s = time.perf_counter() - start
    if item is _DONE:
      self._queue.put(_DONE)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self, timeout_s: float = 60.0) -> None:
    """Stops the thread and waits for it (at most `timeout_s`), dropping unused batches.

    Waiting matters when one process trains several runs (tests, in-process sweeps):
    no thread of a finished run still transfers batches while the next one computes.
    """
    self._stop.set()
    self._thread.join(timeout_s)
    if self._thread.is_alive():
      logging.warning('The input thread did not stop within %.0f s (a batch still being '
                      'read); leaving it to end by itself.', timeout_s)
    while not self._queue.empty():
      self._queue.get_nowait()
