"""How every command-line entry point ends on a user's mistake: one line, no traceback.

A bad flag value, a file that is missing or cannot be read, a config that does not
validate, a run that stopped on a non-finite loss: `error: <what and what is allowed>`
on stderr and exit status 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

# ValueError covers checkpointing.CheckpointError and the config and data checks; OSError
# a missing or unreadable file; FloatingPointError `nonfinite_policy=stop`.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  try:
    yield
  except USER_ERRORS as e:
    raise SystemExit(f'error: {e}') from None
