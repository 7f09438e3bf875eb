"""TensorFlow and TFDS are optional: imported only by the parts that read TensorFlow formats.

With requirements-core.txt alone, the models, the training loop on `dataset='synthetic'`,
checkpoints, metrics (TensorBoard files included), benchmarks and experiments run; the
offline, TFDS and ImageFolder datasets and Keras and TF-Slim weights need requirements.txt.
`required` turns the import of a missing one into one line on what to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from typing import Iterator, NoReturn

INSTALL = 'pip install -r requirements.txt'


def available(module: str) -> bool:
  """Whether `module` can be imported, found without importing it (TensorFlow takes seconds)."""
  return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def required(what: str, *packages: str) -> Iterator[None]:
  """An import under it that misses one of `packages` (pip names) fails as one line,
  `<what> needs <packages>: pip install ...`, a ValueError as `cli.USER_ERRORS` reports."""
  try:
    yield
  except ModuleNotFoundError as e:
    if (e.name or '').partition('.')[0] not in {p.replace('-', '_') for p in packages}:
      raise  # Something else is missing: a broken install, keep the traceback.
    raise ValueError(f'{what} needs {" and ".join(packages)}: {INSTALL}') from None


def _summary_writer_needs_tensorflow(logdir: str) -> NoReturn:
  raise ModuleNotFoundError(f"clu's SummaryWriter({logdir!r}) needs tensorflow; "
                            'inception_jax.metrics.TensorBoardWriter does not')


def let_clu_import_without_tensorflow() -> None:
  """Lets `clu.metric_writers` and `clu.periodic_actions` import where TensorFlow is missing.

  clu 0.0.12's metric_writers imports its tf.summary writer, and with it TensorFlow, as it
  is imported (google/CommonLoopUtils#358); periodic_actions imports metric_writers. Without
  TensorFlow that one module is stood in for, so that the rest of clu imports;
  `metrics.create_writer` then writes TensorBoard files through the tensorboard package.
  """
  name = 'clu.metric_writers.summary_writer'
  if name in sys.modules or available('tensorflow'):
    return
  stand_in = types.ModuleType(name, "Stands in for clu's tf.summary writer: no TensorFlow.")
  stand_in.SummaryWriter = _summary_writer_needs_tensorflow
  sys.modules[name] = stand_in
