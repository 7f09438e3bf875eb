"""Sweeps, run reading, summaries, convergence curves and the dying-network monitor.

One real sweep (two tiny 4-step runs, with and without shortcuts) is shared by the
tests of this module; the last test extends it, so it stays last. Everything else
reads synthetic run directories.
"""

import csv
import json
import logging
import os
import shlex
import sys
from unittest import mock

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags

from experiments import plot_curves, runs, summarize, sweep
from inception_jax import checkpointing, metrics, train
from inception_jax.models import create_model, summary
from tests.util import REPO, tiny_config

SWEEP_FILE = '''
from tests.util import tiny_config


def get_config():
  return tiny_config({data_dir!r}, num_train_steps=4, log_every_steps=2, eval_every_steps=2,
                     checkpoint_every_steps=2, compilation_cache_dir={cache!r})


def sweep():
  return [{{'model.use_residual': True}}, {{'model.use_residual': False}}]
'''
NAMES = ('model.use_residual=True', 'model.use_residual=False')


def run_sweep_cli(*args: str) -> None:
  """`python -m experiments.sweep ARGS`, in this process (trials still get their own)."""
  argv = ['sweep', *args]
  flags.FLAGS.unparse_flags()
  with mock.patch.object(sys, 'argv', argv):  # config_flags reads its overrides there.
    sweep.main(flags.FLAGS(argv))


@pytest.fixture(scope='module')
def sweep_file(tmp_path_factory, tiny_data_dir):
  path = tmp_path_factory.mktemp('sweep_config') / 'tiny_sweep.py'
  path.write_text(SWEEP_FILE.format(data_dir=tiny_data_dir,
                                    cache=os.path.join(REPO, '.jax_cache')))
  return str(path)


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory, sweep_file):
  """The tiny sweep, run once: a workdir with two finished 4-step runs, run at once, each
  pinned to a GPU slot of its own (which on a CPU host changes nothing else)."""
  workdir = str(tmp_path_factory.mktemp('sweep'))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
    mp.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')  # Tiny models compile faster.
    mp.delenv('SLURM_ARRAY_TASK_ID', raising=False)
    run_sweep_cli(f'--config={sweep_file}', f'--workdir={workdir}', '--parallel=2', '--pin=gpu')
  return workdir


def write_run(workdir, records, num_classes=10, **config):
  """A synthetic run directory: config.json, metrics.jsonl and the dataset's classes."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, runs.CONFIG_FILE), 'w') as f:
    json.dump({'num_train_steps': 100, 'model': {'name': 'inception_v4'}, **config}, f)
  with open(os.path.join(workdir, train.DATASET_FILE), 'w') as f:
    json.dump({'num_classes': num_classes}, f)
  with open(os.path.join(workdir, metrics.METRICS_FILE), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  return runs.Run.load(workdir)


def test_an_epoch_is_of_the_train_split_without_its_minival(tmp_path, tiny_data_dir):
  # 200 training images, 20% held out: 160 train, 10 steps of 16 (not 12).
  config = tiny_config(tiny_data_dir, holdout_fraction=0.2, batch_size=16).to_dict()
  assert write_run(str(tmp_path / 'computed'), [], **config).steps_per_epoch == 10
  recorded = write_run(str(tmp_path / 'recorded'), [], **config)
  with open(os.path.join(recorded.workdir, train.DATASET_FILE), 'w') as f:
    json.dump({'num_classes': 10, 'steps_per_epoch': 7}, f)  # What training wrote wins.
  assert runs.Run.load(recorded.workdir).steps_per_epoch == 7


# --- Seeds: arms, bands, mean ± std, paired comparisons. ---

def _seeded_runs(tmp_path):
  """Two arms of three seeds: errors (eval/top1_error at steps 10, 20) chosen by hand."""
  errors = {('a', 0): (0.8, 0.5), ('a', 1): (0.7, 0.4), ('a', 2): (0.9, 0.6),
            ('b', 0): (0.8, 0.6), ('b', 1): (0.8, 0.5), ('b', 2): (0.9, 0.8)}
  made = []
  for (arm, seed), (first, last) in errors.items():
    records = [{'step': 10, 'eval/top1_error': first, 'eval/top1_accuracy': 1 - first},
               {'step': 20, 'eval/top1_error': last, 'eval/top1_accuracy': 1 - last}]
    made.append(write_run(str(tmp_path / f'{arm}{seed}'), records, seed=seed,
                          model={'name': 'inception_v4', 'use_residual': arm == 'a'}))
  return made


def test_runs_that_differ_only_in_seed_are_one_arm(tmp_path):
  arms = runs.arms(_seeded_runs(tmp_path))
  assert [a.label for a in arms] == ['use_residual=True', 'use_residual=False']
  assert [a.seeds for a in arms] == [[0, 1, 2], [0, 1, 2]]
  steps, mean, low, high = plot_curves.arm_series(arms[0], 'eval/top1_error')
  np.testing.assert_array_equal(steps, [10, 20])
  np.testing.assert_allclose(mean, [0.8, 0.5])
  np.testing.assert_allclose((low, high), ([0.7, 0.4], [0.9, 0.6]))
  _, mean, low, high = plot_curves.arm_series(arms[0], 'eval/top1_error', band='std')
  np.testing.assert_allclose(high - mean, [0.0816497, 0.0816497], rtol=1e-5)  # population std
  np.testing.assert_allclose(mean - low, high - mean)
  out = tmp_path / 'bands.png'
  plot_curves.main([str(tmp_path), '--metric=top1_error', f'--out={out}'])
  assert out.stat().st_size > 10_000


def test_summary_gives_mean_std_and_a_paired_bootstrap_interval(tmp_path, capsys):
  made = _seeded_runs(tmp_path)
  rows = summarize.summary_rows(made, [0.45], cost=False)
  by_run = {r.workdir: row for r, row in zip(made, rows)}
  arms = runs.arms(made)
  a, b = summarize.arm_rows(arms, by_run, [0.45])
  assert (a['n'], a['seeds']) == (3, [0, 1, 2])
  np.testing.assert_allclose(a['top-1 final'], (0.5, 0.1))  # sample std of .5, .4, .6
  np.testing.assert_allclose(b['top-1 final'], (0.6333333, 0.1527525), rtol=1e-6)
  assert a['steps to 45%'] == ((20.0, 0.0), 2) and b['steps to 45%'] == ((20.0, 0.0), 1)
  (c,) = summarize.comparisons(arms, by_run, ['top-1 final'])
  # Per-seed differences b - a: +0.1, +0.1, +0.2.
  assert (c['pairs'], c['metric']) == (3, 'top-1 final')
  np.testing.assert_allclose(c['difference'], 0.4 / 3)
  assert 0.1 - 1e-9 <= c['low'] <= c['difference'] <= c['high'] <= 0.2 + 1e-9
  same = summarize.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
  assert same == (0.0, 0.0, 0.0)
  summarize.main([str(tmp_path), '--targets=0.45', '--no_cost'])
  printed = capsys.readouterr().out
  assert ('| use_residual=True | 3 | 0, 1, 2 | 0 of 3 seeds died, 3 unstable | 50.0 ± 10.0 | '
          '50.0 ± 10.0 |') in printed
  assert '| use_residual=False | use_residual=True | top-1 final | 3 | +13.3 pt |' in printed


# --- The real sweep. ---

def test_sweep_trains_every_trial_in_a_named_workdir(sweep_dir):
  assert sorted(os.listdir(sweep_dir)) == sorted(NAMES)
  for name, use_residual in zip(NAMES, (True, False)):
    run = runs.Run.load(os.path.join(sweep_dir, name))
    assert run.config['model']['use_residual'] is use_residual
    assert run.finished and run.last_step == 4 and run.total_steps == 4
    assert run.checkpoint_steps() == [2, 4]
    assert list(run.series('eval/top1_error')[0]) == [2, 4]
    assert os.path.getsize(os.path.join(run.workdir, sweep.LOG_FILE)) > 0


def test_parallel_trials_each_get_their_own_device(sweep_dir):
  pinned = set()
  for name in NAMES:
    with open(os.path.join(sweep_dir, name, sweep.LOG_FILE)) as f:
      header = f.readline().split()
    assert header[0] == '#' and '--config.distributed=false' in header
    pinned.add(header[1])
  assert pinned == {'CUDA_VISIBLE_DEVICES=0', 'CUDA_VISIBLE_DEVICES=1'}


def test_a_tpu_slot_is_one_chip_with_its_own_port():
  env = sweep.device_env(3, 'tpu')
  assert env['TPU_VISIBLE_CHIPS'] == '3' and env['TPU_PROCESS_BOUNDS'] == '1,1,1'
  assert env['TPU_CHIPS_PER_PROCESS_BOUNDS'] == '1,1,1'
  assert env['TPU_MESH_CONTROLLER_PORT'] == str(sweep.TPU_PORT + 3)
  assert sweep.device_env(3, 'none') == {}


def test_stage_monitor_clipping_and_dead_flag_are_logged(sweep_dir):
  residual = runs.Run.load(os.path.join(sweep_dir, NAMES[0]))
  for stat in metrics.STAGE_STATS:
    keys = {k for r in residual.records for k in r if k.startswith(f'train/{stat}/')}
    assert keys == {f'train/{stat}/InceptionResNet{c}' for c in 'ABC'}
    for key in keys:
      steps, values = residual.series(key)
      assert list(steps) == [2, 4] and np.all(np.isfinite(values))
      assert np.all(values >= 0) and (stat == 'dead_channels' or np.all(values > 0))
  assert not any(k.startswith('train/stage') for r in residual.records for k in r)
  _, clipped = residual.series('train/clipped_fraction')
  assert set(clipped) <= {0.0, 0.5, 1.0}  # Two steps a log.
  assert list(residual.series('train/network_dead')[1]) == [0.0, 0.0]
  assert residual.outcome.died_at is None
  # Without shortcuts there is no shortcut to measure; the branch and dead channels remain.
  plain = runs.Run.load(os.path.join(sweep_dir, NAMES[1]))
  assert not any(k.startswith('train/shortcut_rms') for r in plain.records for k in r)
  assert any(k.startswith('train/branch_rms') for r in plain.records for k in r)


def test_summary_rows_are_the_logged_values(sweep_dir, tmp_path, capsys):
  found = runs.find_runs([sweep_dir])
  rows = summarize.summary_rows(found, targets=[0.05, 1.0])
  assert [r['run'] for r in rows] == ['use_residual=False', 'use_residual=True']
  for run, row in zip(found, rows):
    records = [r for r in metrics.read_metrics(run.workdir) if 'eval/top1_error' in r]
    assert row['top-1 final'] == records[-1]['eval/top1_error']
    assert row['top-1 best'] == min(r['eval/top1_error'] for r in records)
    assert row['top-5 best'] == min(r['eval/top5_error'] for r in records)
    assert row['status'] == 'finished' and row['step'] == 4
    reached = [r['step'] for r in records if r['eval/top1_accuracy'] >= 0.05]
    assert row['steps to 5%'] == (reached[0] if reached else None)
    assert row['steps to 100%'] is None
    assert row['wall-clock s'] > 0
    # The parameter count from the config is that of the trained checkpoint.
    state = checkpointing.load_variables(os.path.join(run.workdir, 'checkpoints', '4',
                                                      'default'))
    assert row['params'] == sum(np.size(p) for p in jax.tree.leaves(state['params']))
    assert row['GFLOPs'] > 0
  assert rows[0]['GFLOPs'] == pytest.approx(rows[1]['GFLOPs'], rel=0.01)  # Same layers.

  summarize.main([sweep_dir, '--targets=0.05', f'--csv={tmp_path / "s.csv"}'])
  table = capsys.readouterr().out.splitlines()
  assert table[0].startswith('| run | status | outcome | died at | step | top-1 final err. % |')
  assert table[2].startswith(f'| use_residual=False | finished | {rows[0]["outcome"]} | - | 4 | '
                            f'{100 * rows[0]["top-1 final"]:.1f} |')
  with open(tmp_path / 's.csv') as f:
    written = list(csv.DictReader(f))
  assert float(written[1]['top-1 best']) == rows[1]['top-1 best']


def test_plot_curves_draws_every_run(sweep_dir, tmp_path, capsys):
  out = str(tmp_path / 'curves.png')
  plot_curves.main([sweep_dir, '--metric=top1_error,loss', f'--out={out}', '--targets=0.05'])
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert '| run | step | steps to 5% |' in capsys.readouterr().out

  found = runs.find_runs([sweep_dir])
  fig = plot_curves.plot(found, ['top1_error'], str(tmp_path / 'epochs.png'), x='epoch')
  lines = fig.axes[0].get_lines()
  assert [line.get_label() for line in lines] == [
      'use_residual=False (eval)', 'use_residual=False (train)',
      'use_residual=True (eval)', 'use_residual=True (train)']
  steps, errors = found[1].series('eval/top1_error')
  np.testing.assert_allclose(lines[2].get_ydata(), 100 * errors)
  # 200 tiny training images in batches of 8: 25 steps per epoch.
  np.testing.assert_allclose(lines[2].get_xdata(), steps / 25)


def test_print_commands_and_trial_index(sweep_file, tmp_path, capsys, monkeypatch):
  monkeypatch.delenv('SLURM_ARRAY_TASK_ID', raising=False)
  run_sweep_cli(f'--config={sweep_file}', f'--workdir={tmp_path}', '--print_commands',
                '--config.seed=3')
  commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
  assert len(commands) == 2
  for command, name in zip(commands, NAMES):
    assert command[1] == os.path.join(REPO, 'main.py')
    assert command[2:] == [f'--config={sweep_file}', f'--workdir={tmp_path / name}',
                           '--config.seed=3', f'--config.{name}']
  monkeypatch.setenv('SLURM_ARRAY_TASK_ID', '1')
  run_sweep_cli(f'--config={sweep_file}', f'--workdir={tmp_path}', '--print_commands')
  assert capsys.readouterr().out.count('main.py') == 1
  with pytest.raises(SystemExit, match='trial_index=2 is invalid: this sweep has 2 trials'):
    run_sweep_cli(f'--config={sweep_file}', f'--workdir={tmp_path}', '--trial_index=2')


# --- Sweep configs and names. ---

def test_trial_names_and_overrides(tiny_data_dir):
  assert sweep.trial_name({'model.residual_scale': 0.1, 'model.use_residual': False}) == (
      'model.residual_scale=0.1,model.use_residual=False')
  assert sweep.trial_name({'model.repeats': (1, 3, 1), 'dataset': 'a/b c'}) == (
      'model.repeats=1x3x1,dataset=a_b_c')
  assert sweep.trial_name({}) == 'base'
  long = sweep.trial_name({'init_from': 'x' * 300})
  assert len(long) == 200 and long != sweep.trial_name({'init_from': 'x' * 301})

  base = ml_collections.ConfigDict({'model': {'scale': (1.0, 2.0)}})
  assert sweep.apply_overrides(base, {'model.scale': 0.5}).model.scale == (0.5,)
  with pytest.raises(ValueError, match="unknown config key 'model.nope'"):
    sweep.apply_overrides(base, {'model.nope': 1})
  with pytest.raises(ValueError, match=r'trial 1 .*residual_scale=-1.0'):
    sweep.make_trials(tiny_config(tiny_data_dir),
                      [{'seed': 1}, {'model.residual_scale': -1.0}], '/tmp/x')
  with pytest.raises(ValueError, match='same overrides'):
    sweep.make_trials(tiny_config(tiny_data_dir), [{'seed': 1}, {'seed': 1}], '/tmp/x')


SWEEPS = os.path.join(REPO, 'configs', 'sweeps')


@pytest.mark.parametrize('spec', sorted(
    f for f in os.listdir(SWEEPS) if f.endswith('.py') and f not in ('__init__.py', 'common.py')
) + [f'{name}.py:imagenet' for name in ('residual_scale', 'width', 'use_residual',
                                         'paper_pairs', 'scaling_phase')])
def test_sweep_configs_load_and_validate(spec):
  path, arg = sweep.split_spec(os.path.join(SWEEPS, spec))
  module = sweep.load_module(path)
  base = module.get_config() if arg is None else module.get_config(arg)
  overrides = sweep.load_sweep(os.path.join(SWEEPS, spec))
  trials = sweep.make_trials(base, overrides, '/tmp/sweep')
  assert len({t.name for t in trials}) == len(overrides) >= 2
  if arg == 'imagenet':
    assert {t.config.dataset for t in trials} == {'imagenet2012'}


@pytest.mark.parametrize('setting, wide, narrow', [(None, 1072, 536), ('imagenet', 2144, 858)])
def test_scaling_phase_puts_its_widest_stage_above_and_below_1000_channels(setting, wide,
                                                                           narrow):
  # Sec. 3.3: the deaths were seen beyond ~1000 filters.
  module = sweep.load_module(os.path.join(SWEEPS, 'scaling_phase.py'))
  trials = sweep.make_trials(module.get_config(setting), module.sweep(setting), '/tmp/sweep')
  widest = {}
  for width in {t.config.model.width_multiplier for t in trials}:
    options = dict(trials[0].config.model.to_dict(), width_multiplier=width, repeats=(1, 1, 1))
    rows = summary.stage_stats(create_model(num_classes=10, **options), 75)
    widest[width] = max(r.output_shape[-1] for r in rows if r.name.startswith('InceptionResNet'))
  assert widest == {module.WIDE[setting or 'offline']: wide,
                    module.NARROW[setting or 'offline']: narrow}
  lrs = {t.config.learning_rate for t in trials}
  assert len(lrs) >= 4 and max(lrs) / min(lrs) >= 8
  assert {t.config.seed for t in trials} == {0, 1}


# --- Synthetic runs. ---

def test_steps_to_reach_and_wall_clock(tmp_path):
  run = write_run(str(tmp_path / 'run'), [
      {'step': 10, 'eval/top1_accuracy': 0.3, 'uptime': 40.0},
      {'step': 20, 'eval/top1_accuracy': 0.55, 'uptime': 50.0},
      # Restarted from the checkpoint at step 10: step 20 is redone and logged again.
      {'step': 20, 'eval/top1_accuracy': 0.45, 'uptime': 12.0},
      {'step': 30, 'eval/top1_accuracy': 0.5, 'uptime': 20.0},
      {'step': 40, 'eval/top1_accuracy': 0.8, 'uptime': 30.0},
  ])
  assert run.steps_to_reach(0.5) == 30  # The redone step 20 (0.45) replaces the first.
  assert run.steps_to_reach(0.3) == 10
  assert run.steps_to_reach(0.8) == 40
  assert run.steps_to_reach(0.81) is None
  assert run.wall_clock_seconds == 80.0  # 50 s before the restart, 30 s after.
  assert not run.finished and run.last_step == 40


def test_dead_network_is_flagged(tmp_path):
  dead = {'train/pre_pool_zero_fraction': 0.999, 'train/dead_unit_fraction': 0.99}
  run = write_run(str(tmp_path / 'dead'), [
      {'step': 10, 'train/pre_pool_zero_fraction': 0.6, 'train/dead_unit_fraction': 0.1},
      {'step': 20, **dead}, {'step': 30, **dead, 'train/skipped_steps': 2.0},
      {'step': 40, **dead, 'train/skipped_steps': 2.0, 'eval/top1_error': 0.9}])
  alive = write_run(str(tmp_path / 'alive'), [
      {'step': 40, 'train/pre_pool_zero_fraction': 0.5, 'train/dead_unit_fraction': 0.0,
       'eval/top1_error': 0.5}], seed=1)
  assert run.outcome.kind == 'died' and run.outcome.died_at == 20
  assert alive.outcome.kind == 'trained'
  rows = summarize.summary_rows([run, alive], cost=False)
  assert rows[0]['status'] == 'at step 40/100, 2 non-finite steps skipped'
  assert (rows[0]['outcome'], rows[0]['died at']) == ('died', 20)
  assert (rows[1]['status'], rows[1]['outcome']) == ('at step 40/100', 'trained')


def test_train_scalars_warn_when_the_network_died(caplog):
  values = {'loss': 2.3, 'top1_error': 0.9, 'pre_pool_zero_fraction': np.float32(0.995),
            'dead_unit_fraction': np.float32(0.96),
            'stage': {'branch_rms': {'InceptionResNetC': np.float32(0.25)}}}
  with caplog.at_level(logging.WARNING):
    scalars = metrics.train_scalars(values, step=120)
  assert scalars['train/network_dead'] == 1.0
  assert scalars['train/branch_rms/InceptionResNetC'] == 0.25
  assert scalars['train/top1_accuracy'] == pytest.approx(0.1)
  assert 'NETWORK DEAD at step 120' in caplog.text
  caplog.clear()
  for alive in ({'pre_pool_zero_fraction': 0.98}, {'dead_unit_fraction': 0.9}):
    assert metrics.train_scalars({**values, **alive}, step=5)['train/network_dead'] == 0.0
  assert 'NETWORK DEAD' not in caplog.text


# Last: it extends the shared sweep.
def test_sweep_resumes_unfinished_and_skips_finished(sweep_dir, sweep_file, capsys,
                                                     monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  monkeypatch.delenv('SLURM_ARRAY_TASK_ID', raising=False)
  first, second = (os.path.join(sweep_dir, n) for n in NAMES)
  before = metrics.read_metrics(first)
  # Two more steps for trial 1 only: it resumes from its step-4 checkpoint.
  run_sweep_cli(f'--config={sweep_file}', f'--workdir={sweep_dir}', '--trial_index=1',
                '--config.num_train_steps=6')
  assert '[1] model.use_residual=False: ran' in capsys.readouterr().out
  resumed = runs.Run.load(second)
  assert resumed.finished and resumed.checkpoint_steps() == [2, 4, 6]
  assert [r['step'] for r in resumed.records if 'train/loss' in r] == [2, 4, 6]
  with open(os.path.join(second, sweep.LOG_FILE)) as f:
    assert 'Resuming from' in f.read()
  assert metrics.read_metrics(first) == before
  # Both are finished for 4 steps now: nothing runs.
  run_sweep_cli(f'--config={sweep_file}', f'--workdir={sweep_dir}')
  out = capsys.readouterr().out
  assert out.count('finished before, skipped') == 2
  assert metrics.read_metrics(first) == before
