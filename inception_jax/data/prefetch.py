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
    self._thread = threading.Thread(target=self._fill, args=(batches, transfer), daemon=True)
    self._thread.start()

  def _fill(self, batches, transfer) -> None:
    try:
      for batch in batches:
        item = transfer(batch)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put(e)

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

  def close(self) -> None:
    self._stop.set()
