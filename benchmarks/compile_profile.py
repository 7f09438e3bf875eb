"""Where a deviceless TPU compile spends its time, read from libtpu's own log.

Used by `compile_time.py --profile`. libtpu logs, per fusion, the seconds it took to emit
(`lowering_emitter`) and the LLO instructions it emitted (`deepsea_compiler_backend`), and
why it emitted a fusion again ("Recompiling: ... due to error: ..."); the optimized HLO that
`--xla_dump_to` writes names the model scope of each fusion. Together they give the emission
seconds per block of the network, per kind (convolution forward, its gradients, the rest), and
what the re-emissions cost. Emission seconds are thread seconds: libtpu emits fusions on
several threads at once, so they add up to more than the compile's wall seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import glob
import os
import re

# What libtpu must log, set before it loads (in the process that compiles).
LOG_ENV = {'TPU_STDERR_LOG_LEVEL': '0', 'TPU_MIN_LOG_LEVEL': '0',
           'TPU_VMODULE': 'deepsea_compiler_backend=1,lowering_emitter=1'}
# A glog line: I<month><day> <time> <thread> <file:line>] <message>.
_EMIT = re.compile(r'^.(\d{4} [\d:.]+)\s+(\d+) \S+\] '
                   r'XLA::TPU emitting for (\S+) time: .*?\((\d+) us\)')
_LLO = re.compile(r'\] \[([^\]]+)\] LLO optimizing ([\d,]+) instructions')
_RETRY = re.compile(r'Recompiling: %(\S+) = .* due to error: (.*?)\s*$')
_OP_NAME = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"')
# Scopes of the op name that are transformations or scan plumbing, not blocks.
_PLUMBING = {'while', 'body', 'cond', 'closed_call', 'checkpoint', 'block',
             'Inception._apply_stage'}


@dataclasses.dataclass
class Fusion:
  """One fusion (or other instruction) as libtpu emitted it: once, or again after an error."""
  seconds: list[float] = dataclasses.field(default_factory=list)   # per emission
  ends: list[float] = dataclasses.field(default_factory=list)      # its end, s in the year
  threads: set[str] = dataclasses.field(default_factory=set)
  instructions: list[int] = dataclasses.field(default_factory=list)  # LLO, per emission
  retry_errors: list[str] = dataclasses.field(default_factory=list)
  op_name: str = ''


def environment(dump_dir: str, base: dict[str, str]) -> dict[str, str]:
  """`base` with libtpu's emission log on and the optimized HLO dumped to `dump_dir`."""
  flags = f'{base.get("XLA_FLAGS", "")} --xla_dump_to={dump_dir}'.strip()
  return dict(base, **LOG_ENV, XLA_FLAGS=flags)


def read(log: str, dump_dir: str, step: str) -> dict[str, Fusion]:
  """Every fusion libtpu emitted while compiling `step` ('train' or 'eval')."""
  fusions: dict[str, Fusion] = collections.defaultdict(Fusion)
  for line in log.splitlines():
    if m := _EMIT.search(line):
      fusion = fusions[m.group(3)]
      fusion.seconds.append(int(m.group(4)) / 1e6)
      # The log gives no year: 2000's, a leap year, so that 29 February reads too.
      when = datetime.datetime.strptime('2000' + m.group(1), '%Y%m%d %H:%M:%S.%f')
      fusion.ends.append((when - datetime.datetime(2000, 1, 1)).total_seconds())
      fusion.threads.add(m.group(2))
    elif m := _LLO.search(line):
      fusions[m.group(1)].instructions.append(int(m.group(2).replace(',', '')))
    elif m := _RETRY.search(line):
      fusions[m.group(1)].retry_errors.append(m.group(2))
  paths = glob.glob(os.path.join(dump_dir, f'*jit_{step}_step*.after_optimizations.txt'))
  if len(paths) != 1:
    raise ValueError(f'expected one optimized HLO of the {step} step in {dump_dir}, '
                     f'found {len(paths)}')
  with open(paths[0]) as f:
    for line in f:
      if (m := _OP_NAME.match(line)) and m.group(1) in fusions:
        fusions[m.group(1)].op_name = m.group(2)
  return {name: f for name, f in fusions.items() if f.seconds}


def stage(op_name: str) -> str:
  """The network block a fusion belongs to ('scan:' marks a scanned body), or 'other'."""
  scopes = [s for s in op_name.split('/')[1:] if '(' not in s and s not in _PLUMBING]
  blocks = [s for s in scopes[:-1] if s[:1].isupper()]
  if not blocks:
    return 'other'
  name = re.sub(r'_\d+$', '', blocks[0])  # InceptionResNetA_3 -> InceptionResNetA
  return f'scan:{name}' if '/while/body/' in op_name else name


def kind(op_name: str) -> str:
  if 'conv_general_dilated' not in op_name:
    return 'other'
  return 'conv gradient' if 'transpose(' in op_name else 'conv forward'


def summary(fusions: dict[str, Fusion]) -> dict:
  """Totals, per stage and per kind, and the re-emissions, for one JSON record."""
  by_stage, by_kind = collections.Counter(), collections.Counter()
  for f in fusions.values():
    by_stage[stage(f.op_name)] += sum(f.seconds)
    by_kind[kind(f.op_name)] += sum(f.seconds)
  retried = {n: f for n, f in fusions.items() if f.retry_errors}
  errors = collections.Counter(re.sub(r'\d+', 'N', e) for f in retried.values()
                               for e in f.retry_errors)
  emissions = [(end - seconds, end) for f in fusions.values()
               for seconds, end in zip(f.seconds, f.ends)]
  return {
      # Wall seconds from the first emission's start to the last one's end, and the threads
      # that emitted: libtpu sizes its pool to the cores the process may run on.
      'emit_span_s': (max(end for _, end in emissions) - min(start for start, _ in emissions)
                      if emissions else 0.0),
      'emit_threads': len(set().union(*(f.threads for f in fusions.values()))),
      'emit_thread_s': sum(sum(f.seconds) for f in fusions.values()),
      'fusions_emitted': len(fusions),
      # No thread can split one fusion: the longest bounds the emission on any number of cores.
      'longest_emit_s': max((sum(f.seconds) for f in fusions.values()), default=0.0),
      'llo_instructions': sum(sum(f.instructions) for f in fusions.values()),
      'retried_fusions': len(retried),
      # What the emissions that were thrown away cost: all but the last of each fusion.
      'retry_thread_s': sum(sum(f.seconds[:-1]) for f in retried.values()),
      'retry_errors': dict(errors),
      'emit_s_by_stage': {k: round(v, 1) for k, v in by_stage.most_common()},
      'emit_s_by_kind': {k: round(v, 1) for k, v in by_kind.most_common()},
  }


def stage_table(records: list[dict]) -> list[list[str]]:
  """Emission thread seconds per block (rows) for each profiled record (columns)."""
  profiled = [r for r in records if 'emit_s_by_stage' in r]
  stages = list(dict.fromkeys(s for r in profiled for s in r['emit_s_by_stage']))
  rows = [['emit thread s', *(f'{r["target"]} {r["setting"]} {r["step"]}, '
                             f'{r["host_cores"]} cores' for r in profiled)]]
  for s in stages:
    rows.append([s, *(f'{r["emit_s_by_stage"].get(s, 0):.0f}' for r in profiled)])
  return rows
