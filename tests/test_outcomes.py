"""Sec. 3.3's outcomes from metric logs made by hand; the per-cell counts and the phase diagram."""

import json

import pytest

from experiments import outcomes, plot_phase, summarize
from experiments import runs as runs_lib
from inception_jax import metrics
from tests.test_experiments import write_run

CLASSES = 10  # Chance: 10% top-1 accuracy.


def _log(zero: list[float], dead_units: list[float], eval_error: float, every: int = 10):
  """Train logs every `every` steps with these pre-pool figures, one evaluation at the end."""
  records = [{'step': every * (i + 1), 'train/pre_pool_zero_fraction': z,
              'train/dead_unit_fraction': d} for i, (z, d) in enumerate(zip(zero, dead_units))]
  records.append({'step': every * len(zero), 'eval/top1_error': eval_error})
  return records


def test_a_network_that_stays_dead_at_chance_died():
  # Dead from step 40 of 100: 7 logs, the last 20% of the run and more.
  records = _log([0.3, 0.6, 0.9] + [0.995] * 7, [0.0, 0.2, 0.5] + [0.97] * 7, 0.9)
  outcome = outcomes.classify(records, CLASSES)
  assert outcome.kind == outcomes.DIED and outcome.died_at == 40
  assert outcome.accuracy == pytest.approx(0.1)


def test_a_network_alive_and_well_below_chance_trained():
  outcome = outcomes.classify(_log([0.3] * 10, [0.0] * 10, 0.6), CLASSES)
  assert outcome.kind == outcomes.TRAINED and outcome.died_at is None
  assert outcome.accuracy == pytest.approx(0.4) and outcome.why == 'alive, 40.0% top-1'
  # At the threshold: 2.5x chance accuracy.
  assert outcomes.classify(_log([0.3] * 10, [0.0] * 10, 0.75), CLASSES).kind == outcomes.TRAINED
  assert outcomes.classify(_log([0.3] * 10, [0.0] * 10, 0.76), CLASSES).kind == outcomes.UNSTABLE


@pytest.mark.parametrize('zero, dead_units, error, why', [
    # Alive, but no better than chance.
    ([0.3] * 10, [0.0] * 10, 0.88, 'alive but 12.0% top-1'),
    # Dead at the end, but only for the last two logs (since step 90 of 100).
    ([0.3] * 8 + [0.999] * 2, [0.0] * 8 + [0.99] * 2, 0.9, 'dead only since step 90'),
    # Dead at one log only, the last: one bad log is noise.
    ([0.3] * 9 + [0.999], [0.0] * 9 + [0.99], 0.9, 'dead only since step 100'),
    # Dead for most of the run, yet its few live units still classify.
    ([0.995] * 10, [0.97] * 10, 0.5, 'dead since step 10 but 50.0% top-1'),
])
def test_everything_else_is_unstable(zero, dead_units, error, why):
  outcome = outcomes.classify(_log(zero, dead_units, error), CLASSES)
  assert outcome.kind == outcomes.UNSTABLE
  assert outcome.why.startswith(why), outcome.why


def test_dead_needs_both_activations_and_channels():
  # 99.5% zeros but 90% of the channels still fire on some image: not dead.
  records = _log([0.995] * 10, [0.9] * 10, 0.9)
  assert not metrics.network_dead(records[0])
  assert outcomes.classify(records, CLASSES).kind == outcomes.UNSTABLE
  assert metrics.network_dead({'train/pre_pool_zero_fraction': metrics.DEAD_ZERO_FRACTION,
                               'train/dead_unit_fraction': metrics.DEAD_UNIT_FRACTION})


def test_a_redone_step_counts_once_and_its_later_log_wins():
  # A resumed run logs steps 90 and 100 again: alive the second time.
  records = _log([0.3] * 8 + [0.999] * 2, [0.0] * 8 + [0.99] * 2, 0.5)
  records += [{'step': 90, 'train/pre_pool_zero_fraction': 0.3, 'train/dead_unit_fraction': 0.0},
              {'step': 100, 'train/pre_pool_zero_fraction': 0.3,
               'train/dead_unit_fraction': 0.0}]
  assert outcomes.classify(records, CLASSES).kind == outcomes.TRAINED


def test_a_run_without_evaluation_is_unstable():
  records = _log([0.3] * 3, [0.0] * 3, 0.5)[:-1]
  assert outcomes.classify(records, CLASSES) == outcomes.Outcome(
      outcomes.UNSTABLE, None, None, 'no train log or no evaluation yet')


def test_thresholds_are_multiples_of_chance():
  # On 1000 classes 0.5% top-1 accuracy is 5x chance: trained; 0.1% near chance: died.
  assert outcomes.classify(_log([0.3] * 10, [0.0] * 10, 0.995), 1000).kind == outcomes.TRAINED
  assert outcomes.classify(_log([0.999] * 10, [0.99] * 10, 0.999), 1000).kind == outcomes.DIED


def test_counts_and_their_description():
  made = [outcomes.Outcome(k, None, None, '') for k in ('died', 'died', 'trained')]
  counts = outcomes.count(made)
  assert counts == {'trained': 1, 'unstable': 0, 'died': 2}
  assert outcomes.describe(counts) == '2 of 3 seeds died, 1 trained'
  assert outcomes.describe(outcomes.count(made[2:])) == '0 of 1 seeds died, 1 trained'


def _phase_runs(tmp_path):
  """A 2 x 2 phase diagram, two seeds a cell: scale 1.0 dies at lr 0.36, 0.1 does not."""
  alive, dead = ([0.3] * 10, [0.0] * 10), ([0.995] * 10, [0.99] * 10)
  cells = {(1.0, 0.045): (alive, alive, 0.5, 0.6), (1.0, 0.36): (dead, dead, 0.9, 0.9),
           (0.1, 0.045): (alive, alive, 0.55, 0.65), (0.1, 0.36): (dead, alive, 0.9, 0.7)}
  made = []
  for (scale, lr), (log0, log1, err0, err1) in cells.items():
    for seed, (log, err) in enumerate(((log0, err0), (log1, err1))):
      made.append(write_run(str(tmp_path / f's{scale}_lr{lr}_{seed}'), _log(*log, err),
                            seed=seed, learning_rate=lr, model={'name': 'inception_resnet_v2',
                                                                'residual_scale': scale}))
  return runs_lib.find_runs([str(tmp_path)])


def test_phase_cells_count_their_seeds(tmp_path):
  rows, xs, table = plot_phase.cells(_phase_runs(tmp_path))
  assert rows == ['residual_scale=0.1', 'residual_scale=1.0'] and xs == [0.045, 0.36]
  assert table['residual_scale=1.0', 0.36].text() == '2/2 died\nerr 90%'
  assert table['residual_scale=0.1', 0.36].text() == '1/2 died\n1 trained\nerr 80%'
  assert table['residual_scale=0.1', 0.36].score == 0.0
  assert table['residual_scale=1.0', 0.045].score == -1.0
  assert plot_phase.format_markdown(_phase_runs(tmp_path)).splitlines()[2:] == [
      '| residual_scale=0.1 | 0/2 died, 2 trained, err 60% | 1/2 died, 1 trained, err 80% |',
      '| residual_scale=1.0 | 0/2 died, 2 trained, err 55% | 2/2 died, err 90% |']


def test_plot_phase_writes_the_picture(tmp_path, capsys):
  _phase_runs(tmp_path / 'sweep')
  out = str(tmp_path / 'phase.png')
  plot_phase.main([str(tmp_path / 'sweep'), f'--out={out}'])
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert '2/2 died' in capsys.readouterr().out


def test_plot_phase_refuses_runs_without_a_learning_rate(tmp_path):
  write_run(str(tmp_path / 'a'), _log([0.3], [0.0], 0.5))
  with pytest.raises(SystemExit):
    plot_phase.main([str(tmp_path / 'a')])


def test_summarize_prints_each_outcome_and_k_of_n_per_cell(tmp_path, capsys):
  made = _phase_runs(tmp_path / 'sweep')
  summarize.main([str(tmp_path / 'sweep'), '--no_cost', f'--jsonl={tmp_path / "raw.jsonl"}'])
  out = capsys.readouterr().out
  assert out.count('| died |') == 3 and out.count('| trained |') == 5
  assert '| 2 of 2 seeds died |' in out and '| 1 of 2 seeds died, 1 trained |' in out
  assert '| 0 of 2 seeds died, 2 trained |' in out
  with open(tmp_path / 'raw.jsonl') as f:
    raw = [json.loads(line) for line in f]
  assert len(raw) == sum(len(r.records) for r in made) == 8 * 11
  assert raw[0] == {'run': made[0].name, **made[0].records[0]}
