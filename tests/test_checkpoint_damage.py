"""A damaged newest checkpoint: one warning line naming it, a fallback, no traceback.

Each file orbax writes into a step directory is damaged in turn, and a fresh process
restores the newest readable checkpoint as `main.py` does when it resumes. Not in
`tests/test_reliability.py`: these processes import this module, and that one's imports (the
train loop, TensorFlow) would add seconds and log lines to each.
"""

import os
import pathlib
import random
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import checkpointing
from tests.util import REPO, subprocess_env

OLDER, NEWEST = 2, 4

# Every file of a step directory of `train_state` (orbax-checkpoint 0.12), and what damage
# to it does: 'detected' (the restore fails: back to OLDER with one warning), 'unread' (the
# restore never reads it: NEWEST, exact), 'logged' (orbax logs one error line when it reads
# the steps' metadata: NEWEST, exact). Patterns: the names under d/ are content hashes.
FILES = [
    ('_CHECKPOINT_METADATA', 'logged'),
    ('commit_success.txt', 'unread'),
    ('default/_METADATA', 'detected'),
    ('default/_sharding', 'unread'),  # The restore takes its shardings from the template.
    ('default/array_metadatas/process_0', 'detected'),
    ('default/commit_success.txt', 'unread'),
    ('default/manifest.ocdbt', 'detected'),
    ('default/d/*', 'detected'),  # The b-tree that the save merged from the process's own.
    ('default/ocdbt.process_0/manifest.ocdbt', 'unread'),  # Superseded by the merged tree.
    # The array data, 'detected', and the process's own b-tree, 'unread'. How the data is
    # split into files varies from save to save; the largest file is data.
    ('default/ocdbt.process_0/d/*', 'data'),
]

# Restores as main.py resumes, under absl's logging, and says whether the values are exact.
_RESTORE = """
import jax
import numpy as np
from absl import app

from inception_jax import checkpointing
from tests.test_checkpoint_damage import train_state


def main(argv):
  checkpoints = checkpointing.RunCheckpoints(argv[1], every_steps=2)
  state, _ = checkpoints.restore_newest_readable(train_state(0))
  step = int(state['step'])
  exact = all(map(np.array_equal, jax.tree.leaves(state), jax.tree.leaves(train_state(step))))
  print(f'restored step {step}, exact: {exact}')
  checkpoints.close()


app.run(main)
"""


def train_state(step: int) -> dict:
  """Like a train state: 48 arrays stored apart (many reads in flight when one fails), 8 small
  ones stored in the b-tree, the step; the values differ from step to step."""
  rng = np.random.default_rng(step)
  big = lambda: jnp.asarray(rng.standard_normal((32, 32), np.float32))
  return {'step': jnp.asarray(step, jnp.int32),
          'params': {f'conv{i}': big() for i in range(24)},
          'batch_stats': {f'bn{i}': jnp.full((32,), float(step + i)) for i in range(8)},
          'opt_state': {f'mu{i}': big() for i in range(24)}}


@pytest.fixture(scope='module')
def saved(tmp_path_factory) -> pathlib.Path:
  directory = tmp_path_factory.mktemp('saved') / 'checkpoints'
  checkpoints = checkpointing.RunCheckpoints(str(directory), every_steps=OLDER)
  for step in (OLDER, NEWEST):
    checkpoints.save(step, train_state(step))
  checkpoints.close()
  return directory


def _restore_damaged(saved: pathlib.Path, tmp: pathlib.Path, relative: pathlib.Path,
                     damage: str) -> tuple[int, list[str]]:
  """A copy of `saved` with file `relative` damaged, restored in a fresh process: the step
  it restored (checked to hold exactly the values saved) and the lines naming NEWEST."""
  directory = tmp / 'checkpoints'
  shutil.copytree(saved, directory)
  path = directory / relative
  size = path.stat().st_size
  path.write_bytes(path.read_bytes()[:size // 2] if damage == 'truncated'
                   else random.Random(0).randbytes(size))
  proc = subprocess.run([sys.executable, '-c', _RESTORE, str(directory)], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0 and 'Traceback' not in out, f'{relative}:\n{out[-3000:]}'
  restored = re.search(r'restored step (\d+), exact: True', proc.stdout)
  assert restored, f'{relative}:\n{out[-3000:]}'  # Never values other than those saved.
  newest = directory / str(NEWEST)
  return int(restored[1]), [line for line in out.splitlines() if str(newest) in line]


def test_the_cases_cover_every_file_of_a_checkpoint(saved):
  step_dir = saved / str(NEWEST)
  covered = [p for pattern, _ in FILES for p in step_dir.glob(pattern)]
  assert sorted(covered) == sorted(p for p in step_dir.rglob('*') if p.is_file())


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
@pytest.mark.parametrize('pattern, effect', FILES, ids=[pattern for pattern, _ in FILES])
def test_a_damaged_file_is_one_warning_and_no_traceback(saved, tmp_path, pattern, effect,
                                                        damage):
  files = sorted((saved / str(NEWEST)).glob(pattern), key=lambda p: -p.stat().st_size)
  assert files, pattern
  for i, file in enumerate(files):
    relative = file.relative_to(saved)
    step, naming = _restore_damaged(saved, tmp_path / str(i), relative, damage)
    fell_back = effect == 'detected' or (effect == 'data' and (i == 0 or step == OLDER))
    assert step == (OLDER if fell_back else NEWEST), f'{relative}: {naming}'
    if fell_back:
      newest = tmp_path / str(i) / 'checkpoints' / str(NEWEST)
      assert len(naming) == 1 and naming[0].startswith('W'), f'{relative}: {naming}'
      assert f'{newest} is unreadable' in naming[0], naming[0]
      assert f'moved to {newest}.unreadable, resuming from step {OLDER}.' in naming[0]
      assert os.path.isdir(f'{newest}.unreadable') and not newest.exists()
    else:
      assert len(naming) == (effect == 'logged'), f'{relative}: {naming}'
