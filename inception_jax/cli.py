"""How every command-line entry point ends on a user's mistake: one line, no traceback.

A bad flag value, a file that is missing or cannot be read, a config that does not
validate, a run that stopped on a non-finite loss, a `--config.<key>` the config does not
have: `error: <what and what is allowed>` on stderr and exit status 1. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

from absl import app

# ValueError covers checkpointing.CheckpointError and the config and data checks; OSError
# a missing or unreadable file; FloatingPointError `nonfinite_policy=stop`.
USER_ERRORS = (ValueError, OSError, FloatingPointError)

# A config override, `--config.model.name=x` or `--noconfig.some_bool`: its dotted path.
_OVERRIDE = re.compile(r'--?(?:no)?config\.([^=]+)')


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  try:
    yield
  except USER_ERRORS as e:
    raise SystemExit(f'error: {e}') from None


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, a `--config.<path>` the config has no place for as one line.

  For `app.run(main, flags_parser=cli.parse_flags)`. ml_collections raises a KeyError,
  AttributeError or IndexError for such an override, with a traceback; absl reports
  every other bad flag itself.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, IndexError) as e:
    message = _bad_override(argv, e)
    if message is None:  # Not an override's mistake: a bug, keep the traceback.
      raise
    raise SystemExit(f'error: {message}') from None


def _bad_override(argv: Sequence[str], error: Exception) -> str | None:
  """Which `--config.<path>` `error` is about, and ml_collections' suggestion if any."""
  paths = [m.group(1) for m in map(_OVERRIDE.match, argv[1:]) if m]
  while error.args and isinstance(error.args[0], Exception):  # AttributeError(KeyError(...))
    error = error.args[0]
  lines = str(error.args[0] if error.args else error).splitlines()
  # A missing key: "'learning_rat'", then 'Did you mean "learning_rate" instead of ...'.
  key = re.fullmatch(r"'(.+)'", lines[0]) if lines else None
  if key:
    component = re.compile(rf'(?<!\w){re.escape(key.group(1))}(?!\w)')
    path = next((p for p in paths if component.search(p)), None)
    if path is None:
      return None
    suggestion = re.search(r'Did you mean "(.+?)" instead', '\n'.join(lines))
    if suggestion is None:
      return f'--config.{path} is not a config key'
    fixed = component.sub(suggestion.group(1), path, count=1)
    return f'--config.{path} is not a config key; did you mean --config.{fixed}?'
  # Others name the path ('Attempting to lookup: learning_rate.x'), or there is one override.
  named = [p for p in paths if p in ' '.join(lines)] or (paths if len(paths) == 1 else [])
  return f'--config.{named[0]}: {" ".join(lines)}' if named else None
