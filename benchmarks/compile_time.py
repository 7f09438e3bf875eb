"""Compile time of a config's steps with its repeated blocks unrolled, scanned, rematerialized.

    pip install -r requirements-tpu.txt    # libtpu; requirements-cuda.txt for h100 targets
    python benchmarks/compile_time.py --target=v5e:2x2 --config=configs/inception_resnet_v2_imagenet.py
    python benchmarks/compile_time.py --target=cpu --config=configs/inception_resnet_v2_imagenet.py \
        --settings=unrolled,scanned --restart --config.batch_size=8 --config.eval_batch_size=8

Each setting is compiled by `benchmarks/aot.py` in a process of its own (no cache shared
between them), one after the other, so that the `unrolled` baseline (no scan, no remat:
every block its own code) is measured in the same run as the others; each row gives its
compile seconds and temporaries against that baseline. XLA's cost analysis counts a
loop's body once, so the FLOPs and bytes of a scanned step are undercounted: FLOP/byte is
the unrolled step's. `--restart` compiles each setting again in a new process that reads
the persistent compilation cache the first one wrote: a restarted run's compile. Only a
target this process can run reads a cache back (`cpu`, or the accelerator's own host): a
deviceless TPU or GPU compile writes entries but PjRt loads them only with the devices.
`scanned_low_effort` is the scanned step compiled with JAX_EXEC_TIME_OPTIMIZATION_EFFORT=-1:
what a lowered effort saves, and in `on-chip values` what the program gives up for it.
`--profile` (TPU targets) compiles each step in a process of its own with libtpu's emission
log on (`compile_profile.py`): the thread seconds spent emitting fusions, per block of the
network and per kind, the LLO instructions emitted, and the fusions emitted again after an
error, with what those cost; and it projects each compile to a TPU VM's many cores: libtpu's
emission spread over them, the rest as measured. `--cores=1,2` compiles every setting on
each number of the host's cores (the compiling process pinned to them): how the compile
scales, measured where the host has the cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from benchmarks import common, compile_profile
from inception_jax import aot

# name -> (model.scan_blocks, model.remat, JAX_EXEC_TIME_OPTIMIZATION_EFFORT or None).
# A lowered effort compiles faster but is another program (no on-chip prefetches on TPU):
# benchmarks/README.md, 'Compile time'.
SETTINGS = {'unrolled': (False, False, None), 'scanned': (True, False, None),
            'scanned_remat': (True, True, None), 'unrolled_remat': (False, True, None),
            'scanned_low_effort': (True, False, -1.0)}
HOST_CORES = aot.host_cores()
# Hosts a profiled compile is projected to: a laptop's 4 or 8 cores, and the 112 vCPUs of the
# TPU VM that compiles for a v5e:2x2 slice (ct5lp-hightpu-4t, Cloud TPU's v5e page). Strings:
# the records' keys, as JSON gives them back.
PROJECT_CORES = ('4', '8', '112')
COLUMNS = (
    ('target', 'target', '{}'), ('setting', 'setting', '{}'), ('step', 'step', '{}'),
    ('cores', 'host_cores', '{}'),
    ('batch/dev', 'per_device_batch', '{:g}'), ('lower s', 'lower_s', '{:.1f}'),
    ('compile s', 'compile_s', '{:.1f}'), ('x unrolled', 'compile_ratio', '{:.2f}'),
    ('restart compile s', 'restart_compile_s', '{:.1f}'), ('temp GB', 'temp_gb', '{:.2f}'),
    ('temp x unrolled', 'temp_ratio', '{:.2f}'), ('total GB', 'hbm_gb', '{:.2f}'),
    ('fusions', 'fusions', '{:,}'), ('on-chip values', 'on_chip_values', '{:,}'),
    ('FLOP/byte (unrolled)', 'flop_per_byte', '{:.1f}'),
    ('emit thread s', 'emit_thread_s', '{:.0f}'), ('LLO instructions', 'llo_instructions', '{:,}'),
    ('retried fusions', 'retried_fusions', '{}'), ('retry thread s', 'retry_thread_s', '{:.0f}'),
)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--target', type=common.list_of(str), default=['v5e:2x2'],
                      help="targets as for aot.py, e.g. v5e:2x2,h100:1x1x8,cpu")
  parser.add_argument('--config', required=True, help='training config file')
  parser.add_argument('--settings', type=common.list_of(str, tuple(SETTINGS)),
                      default=['unrolled', 'scanned', 'scanned_remat'],
                      help=f'any of {", ".join(SETTINGS)}; unrolled is always measured')
  parser.add_argument('--steps', type=common.list_of(str, ('train', 'eval')),
                      default=['train', 'eval'])
  parser.add_argument('--restart', action='store_true',
                      help='compile each setting again in a new process from the cache')
  parser.add_argument('--profile', action='store_true',
                      help="where the compile's time goes (TPU targets): libtpu's emission log")
  parser.add_argument('--cores', type=common.list_of(int, range(1, len(HOST_CORES) + 1)),
                      default=[None], help='pin the compiles to this many of the host\'s '
                      f'cores (a list: each is a run; {len(HOST_CORES)} here); default all')
  parser.add_argument('--json', action='store_true', help='JSON lines instead of the table')
  parser.add_argument('--out', default='', help='also append the JSON lines to this file')
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith('--config.')]
  if bad:
    parser.error(f'unrecognized arguments: {" ".join(bad)} (only --config.<key>=<value> '
                 'overrides are passed on)')
  if args.restart and args.target != ['cpu']:
    parser.error(f'--restart needs --target=cpu, not {",".join(args.target)}: a deviceless '
                 'compile writes cache entries that PjRt loads only with the devices')
  not_tpu = [t for t in args.target if t.partition(':')[0] not in aot.TPU_GENERATIONS]
  if args.profile and not_tpu:
    parser.error(f'--profile reads libtpu\'s log: it needs TPU targets, not {",".join(not_tpu)}')
  if args.cores != [None] and not hasattr(os, 'sched_setaffinity'):
    parser.error(f'--cores={",".join(map(str, args.cores))} pins processes to cores, which '
                 'this system cannot (Linux can)')
  if 'unrolled' not in args.settings:
    args.settings.insert(0, 'unrolled')
  return args, overrides


def run_aot(args, overrides: list[str], target: str, setting: str, steps: list[str],
            cache_dir: str, env: dict[str, str], cores: int | None) -> tuple[list[dict], str]:
  """aot.py's JSON records for `steps` compiled in a fresh process (on `cores` cores)."""
  scan, remat, _ = SETTINGS[setting]
  command = [sys.executable, os.path.join(REPO, 'benchmarks', 'aot.py'), '--json',
             f'--target={target}', f'--config={args.config}', f'--steps={",".join(steps)}',
             f'--compilation_cache_dir={cache_dir}', *overrides,
             f'--config.model.scan_blocks={scan}', f'--config.model.remat={remat}']
  # Pinned before the compiler loads: its thread pools size themselves to these cores.
  pin = functools.partial(os.sched_setaffinity, 0, HOST_CORES[:cores]) if cores else None
  done = subprocess.run(command, capture_output=True, text=True, check=False, env=env,
                        preexec_fn=pin)
  if done.returncode:
    tail = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
    raise SystemExit(f'error: {setting} on {target}: {tail}')
  records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
  return [dict(r, setting=setting) for r in records], done.stderr


def compile_setting(args, overrides: list[str], target: str, setting: str,
                    cache_dir: str, cores: int | None) -> list[dict]:
  """The records of one target and setting; profiled, one process per step."""
  env = dict(os.environ)
  if SETTINGS[setting][2] is not None:
    env['JAX_EXEC_TIME_OPTIMIZATION_EFFORT'] = str(SETTINGS[setting][2])
  if not args.profile:
    return run_aot(args, overrides, target, setting, args.steps, cache_dir, env, cores)[0]
  records = []
  for step in args.steps:
    with tempfile.TemporaryDirectory(prefix='hlo_dump_') as dump:
      [record], log = run_aot(args, overrides, target, setting, [step], cache_dir,
                              compile_profile.environment(dump, env), cores)
      record.update(compile_profile.summary(compile_profile.read(log, dump, step)))
    records.append(record)
  return records


def unrolled_of(records: list[dict]) -> dict[tuple, dict]:
  """The unrolled record of each target, step and core count: what the others compare to."""
  return {baseline_key(r): r for r in records if r['setting'] == 'unrolled'}


def baseline_key(record: dict) -> tuple:
  return record['target'], record['step'], record['host_cores']


def against_baseline(records: list[dict]) -> None:
  """Adds each record's ratios to the unrolled record of its target, step and cores."""
  base = unrolled_of(records)
  for r in records:
    b = base[baseline_key(r)]
    r['compile_ratio'] = r['compile_s'] / b['compile_s']
    r['temp_ratio'] = r['temp_gb'] / b['temp_gb'] if b['temp_gb'] else float('nan')
    if r['setting'] != 'unrolled':  # A loop's body is counted once: the unrolled step's.
      r['gflop_counted'] = r['gflop']
      r['gflop'], r['flop_per_byte'] = b['gflop'], b['flop_per_byte']


def project_cores(records: list[dict]) -> None:
  """Splits each profiled compile into libtpu's emission (spread over the host's cores) and
  the rest (wall and CPU seconds outside it), and projects it, and its ratio to the unrolled
  step's, to PROJECT_CORES: the rest as it is, the emission spread evenly, but no fusion split
  (its longest bounds it). The rest's CPU seconds per wall second say whether it spreads."""
  for r in records:
    if 'emit_span_s' in r:
      r['other_s'] = r['compile_s'] - r['emit_span_s']
      r['other_cpu_s'] = r['compile_cpu_s'] - r['emit_thread_s']
      r['projected_compile_s'] = {
          n: r['other_s'] + max(r['emit_thread_s'] / int(n), r['longest_emit_s'])
          for n in PROJECT_CORES}
  base = unrolled_of(records)
  for r in records:
    if 'projected_compile_s' in r:
      b = base[baseline_key(r)]['projected_compile_s']
      r['projected_ratio'] = {n: r['projected_compile_s'][n] / b[n] for n in PROJECT_CORES}


def main(argv: list[str]) -> None:
  args, overrides = parse_args(argv)
  records = []
  for cores in args.cores:
    for target in args.target:
      for setting in args.settings:
        records += compile_and_restart(args, overrides, target, setting, cores)
  against_baseline(records)
  project_cores(records)
  common.emit(records, args.json, table, args.out)


def compile_and_restart(args, overrides: list[str], target: str, setting: str,
                        cores: int | None) -> list[dict]:
  """One setting's records, with the restart's compile seconds if asked."""
  with tempfile.TemporaryDirectory(prefix='compile_cache_') as cache_dir:
    first = compile_setting(args, overrides, target, setting, cache_dir, cores)
    if args.restart:
      again = compile_setting(args, overrides, target, setting, cache_dir, cores)
      for r, r2 in zip(first, again):
        r['restart_compile_s'] = r2['compile_s']
  print(f'{target} {setting} on {first[0]["host_cores"]} cores: ' + ', '.join(
      f'{r["step"]} {r["compile_s"]:.0f} s' for r in first), file=sys.stderr, flush=True)
  return first


def table(records: list[dict]) -> str:
  text = common.markdown(common.table_rows(records, COLUMNS))
  if any('emit_s_by_stage' in r for r in records):
    text += '\n\n' + common.markdown(compile_profile.stage_table(records))
  if any('projected_compile_s' in r for r in records):
    text += '\n\n' + common.markdown(projection_table(records))
  return text


def projection_table(records: list[dict]) -> list[list[str]]:
  """One row per profiled record: its emission and the rest, and their projection."""
  rows = [['target', 'setting', 'step', 'cores', 'compile s', 'emit s (threads)', 'other s',
           'other CPU s', *(f'{n} cores: s (x unrolled)' for n in PROJECT_CORES)]]
  for r in records:
    if 'projected_compile_s' in r:
      rows.append([r['target'], r['setting'], r['step'], str(r['host_cores']),
                   f'{r["compile_s"]:.1f}', f'{r["emit_span_s"]:.1f} ({r["emit_threads"]})',
                   f'{r["other_s"]:.1f}', f'{r["other_cpu_s"]:.1f}',
                   *(f'{r["projected_compile_s"][n]:.1f} ({r["projected_ratio"][n]:.2f})'
                     for n in PROJECT_CORES)])
  return rows


if __name__ == '__main__':
  main(sys.argv[1:])
