"""What every importer shares: our model's layers, the name-and-shape check, the output.

An importer (`keras.py`, `timm.py`, `slim.py`) is a `Source`: it reads a weight
file into `{tensor name: array}`, names the source layer behind each of our
layers, names that layer's tensors by role (kernel, beta, ...) and converts their
layouts. `convert` does the rest in one place: it builds our model (slim layout,
unrolled blocks), maps every variable, and fails with one `ValueError` listing
every missing, unexpected and mis-shaped tensor before anything is written.
`save` writes `DIR/variables/` and `DIR/model.json`; `load_converted` reads them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import checkpointing
from inception_jax.models import (MIN_IMAGE_SIZE, Inception, create_model, stack_repeats)

Tensors = dict[str, np.ndarray]

# Our variables of each kind of layer, by role; `{}` is the layer's path.
ROLES = {
    'conv_bn': {'kernel': 'params/{}/conv/kernel', 'gamma': 'params/{}/bn/scale',
                'beta': 'params/{}/bn/bias', 'mean': 'batch_stats/{}/bn/mean',
                'var': 'batch_stats/{}/bn/var'},
    'conv': {'kernel': 'params/{}/kernel', 'bias': 'params/{}/bias'},  # residual 1x1 expansion
    'dense': {'kernel': 'params/{}/kernel', 'bias': 'params/{}/bias'},
}
CLASSIFIERS = ('Logits', 'AuxLogits/Logits')  # Their last axis is the class.
BACKGROUND_CLASSES = 1001  # TF-Slim's ImageNet head: class 0 is 'background'.
BN_EPSILON = 1e-3  # TF-Slim, the Keras applications and timm's Inceptions alike.
# The options that fix the architecture, written to model.json (with the name).
ARCH_OPTIONS = ('variant', 'width_multiplier', 'repeats', 'residual_scale', 'use_residual',
                'bn_scale', 'bn_epsilon', 'aux_logits', 'avg_pool_include_pad')
MODEL_FILE = 'model.json'
VARIABLES_DIR = 'variables'
MAX_LISTED = 40  # per kind of problem in the error message


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer of our model: its path in the variable tree and its kind (a `ROLES` key)."""
  path: str
  kind: str


@dataclasses.dataclass(frozen=True)
class Source:
  """How one reference implementation stores an Inception network.

  Attributes:
    name: the `--from` value.
    archs: the networks it has weights for.
    bn_scale: whether its BatchNorm has gamma (our model is built to match).
    read: `(file, arch) -> tensors by name`, numpy, in the source's layout.
    layer_names: `(arch, our layers, source tensor names) -> {our layer path: source
      layer}`; a layer left out is reported as having no source name.
    tensor_names: `(layer, source layer) -> {role: source tensor name}`.
    transform: `(layer, role, array) -> array` in our layout (HWIO, (in, out)).
    ignored: whether a source tensor that maps to nothing is expected to (counters,
      optimizer slots) rather than an error.
  """
  name: str
  archs: tuple[str, ...]
  bn_scale: bool
  read: Callable[[str, str], Tensors]
  layer_names: Callable[[str, Sequence[Layer], Sequence[str]], dict[str, Any]]
  tensor_names: Callable[[Layer, Any], dict[str, str]]
  transform: Callable[[Layer, str, np.ndarray], np.ndarray] = lambda layer, role, x: x
  ignored: Callable[[str], bool] = lambda name: False


@dataclasses.dataclass
class Conversion:
  """The imported variables, the model they fit, and where they came from."""
  model: Inception
  variables: dict[str, Any]  # {'params': ..., 'batch_stats': ...}, numpy, unrolled layout
  source: str
  file: str
  source_classes: int
  drop_background: bool
  num_mapped: int
  ignored: list[str]

  @property
  def label_offset(self) -> int:
    """1 when the head keeps TF-Slim's background class: dataset class i is logit i + 1."""
    return int(self.source_classes == BACKGROUND_CLASSES and not self.drop_background)

  def metadata(self) -> dict[str, Any]:
    """The contents of model.json."""
    model = {'name': self.model.arch,
             **{key: getattr(self.model, key) for key in ARCH_OPTIONS}}
    return {'model': model, 'num_classes': self.model.num_classes,
            'label_offset': self.label_offset,
            'source': {'format': self.source, 'file': os.path.abspath(self.file),
                       'classes': self.source_classes,
                       'dropped_background': self.drop_background}}

  def report(self) -> str:
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    m = self.model
    lines = [f'{m.arch} (slim layout, bn_scale={m.bn_scale}, aux_logits={m.aux_logits}) from '
             f'{self.source} {self.file}: {self.num_mapped} tensors mapped, '
             f'{count(self.variables["params"]):,} parameters, '
             f'{count(self.variables["batch_stats"]):,} BatchNorm statistics.']
    classes = f'classes: {m.num_classes}'
    if self.drop_background:
      classes += f' (dropped the background class 0 of the source\'s {self.source_classes})'
    elif self.label_offset:
      classes += (' (class 0 is the background class, kept: label_offset 1; '
                  '--drop_background gives the 1000 ImageNet classes)')
    lines.append(classes)
    if self.ignored:
      lines.append(f'ignored {len(self.ignored)} non-weight tensors, e.g. {self.ignored[0]}')
    return '\n'.join(lines)


def natural_key(path: str) -> list[Any]:
  """Sort key that puts 'Conv2d_2_...' before 'Conv2d_10_...' (and '1x3' before '3x1')."""
  return [int(t) if i % 2 else t for i, t in enumerate(re.split(r'(\d+)', path))]


def execution_order(model: Inception) -> list[str]:
  """Our top-level modules in the order the network runs them (heads are not stages)."""
  names = []
  for stage in model.stages():
    if stage.repeat is None:
      names.append(stage.name)
    else:
      names += [f'{stage.name}_{i}' for i in range(stage.count)]
  return names


def model_variables(model: Inception) -> dict[str, jax.ShapeDtypeStruct]:
  """Every parameter and BatchNorm statistic of `model` as `{'params/...': ShapeDtypeStruct}`.

  Shapes only (`jax.eval_shape`): nothing is computed or initialised.
  """
  x = jnp.zeros((1, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE, 3))
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  return {k: v for k, v in flat.items() if k.startswith(('params/', 'batch_stats/'))}


def model_layers(model: Inception, shapes: Mapping[str, tuple[int, ...]]) -> list[Layer]:
  """The layers of `model` in the order it runs them: stage by stage, then within a
  block branch by branch, position by position (1x3 before 3x1 in a fork); heads last."""
  layers = []
  for key, shape in shapes.items():
    if not key.startswith('params/') or not key.endswith('/kernel'):
      continue
    path = key[len('params/'):-len('/kernel')]
    if path.endswith('/conv'):
      layers.append(Layer(path[:-len('/conv')], 'conv_bn'))
    else:
      layers.append(Layer(path, 'conv' if len(shape) == 4 else 'dense'))
  order = {name: i for i, name in enumerate(execution_order(model))}
  return sorted(layers, key=lambda layer: (order.get(layer.path.split('/')[0], len(order)),
                                           natural_key(layer.path)))


def block_names(layers: Sequence[Layer], ours: str, branches: Sequence[Sequence[str]],
                join: Callable[[str], str]) -> dict[str, str]:
  """Names the convs of our block `ours` after a source's per-branch name lists.

  `branches[i]` lists the source names of `Branch_<i>`'s convs in our order
  (position, then 1x3 before 3x1 in a fork); `join` makes a full name of one.
  A branch whose conv count differs is left unnamed, so that the check reports
  it rather than misaligning it.
  """
  names = {}
  for i, branch in enumerate(branches):
    convs = [l.path for l in layers if l.path.startswith(f'{ours}/Branch_{i}/')]
    if len(convs) == len(branch):
      names.update({c: join(n) for c, n in zip(convs, branch)})
  return names


def _roles(layer: Layer, bn_scale: bool) -> dict[str, str]:
  """{role: our variable} of one layer."""
  return {role: key.format(layer.path) for role, key in ROLES[layer.kind].items()
          if bn_scale or role != 'gamma'}


def _expected(source: Source, arch: str, layers: Sequence[Layer], tensors: Mapping[str, Any]
              ) -> tuple[dict[str, tuple[Layer, str, str]], list[str]]:
  """{our variable: (layer, role, source name)}, and our variables with no source name."""
  names = source.layer_names(arch, layers, list(tensors))
  expected, unnamed = {}, []
  for layer in layers:
    roles = _roles(layer, source.bn_scale)
    if layer.path not in names:
      unnamed += roles.values()
      continue
    tensor_names = source.tensor_names(layer, names[layer.path])
    for role, ours in roles.items():
      expected[ours] = (layer, role, tensor_names[role])
  return expected, unnamed


def _is_aux(variable: str) -> bool:
  return variable.split('/')[1] == 'AuxLogits'


def build(arch: str, source: Source, *, num_classes: int, aux_logits: bool,
          avg_pool_include_pad: bool = False) -> Inception:
  """Our model in the layout of the released checkpoints, matching `source`'s BatchNorm."""
  return create_model(arch, num_classes=num_classes, variant='slim', bn_scale=source.bn_scale,
                      bn_epsilon=BN_EPSILON, aux_logits=aux_logits,
                      avg_pool_include_pad=avg_pool_include_pad)


def convert(source: Source, file: str, arch: str, *, drop_background: bool = False,
            avg_pool_include_pad: bool = False) -> Conversion:
  """Reads `file` and returns our variables for `arch` (slim layout, unrolled blocks).

  The class count is the source's (minus one with `drop_background`, which drops
  TF-Slim's background class 0); the auxiliary head is imported when the source
  has one. `avg_pool_include_pad` is for weights trained with average pools that count
  the zero padding (torchvision's, e.g. timm's `inception_v3.tv_in1k`).

  Raises:
    ValueError: for a network the source has no weights for, a file that cannot be
      read as the source's, a file without a classifier, or one listing every tensor that is missing, unexpected or of
      the wrong shape.
  """
  if arch not in source.archs:
    raise ValueError(f'{source.name} weights exist for {", ".join(source.archs)}, '
                     f'not {arch!r}')
  tensors = _read(source, file, arch)
  # One trace of a one-class model with the aux head names every tensor; only the
  # classifiers' last axis depends on the class count.
  probe = build(arch, source, num_classes=1, aux_logits=True)
  shapes = {k: tuple(v.shape) for k, v in model_variables(probe).items()}
  expected, unnamed = _expected(source, arch, model_layers(probe, shapes), tensors)
  head = expected.get('params/Logits/bias', (None, None, None))[2]
  if head not in tensors:
    raise ValueError(f'{file} has no classifier {head or "(Logits)"}: a {source.name} {arch} '
                     'with its top (classifier) layer is needed; the file holds e.g. '
                     f'{sorted(tensors, key=natural_key)[:3]}')
  source_classes = int(tensors[head].shape[-1])
  if drop_background and source_classes != BACKGROUND_CLASSES:
    raise ValueError(f'drop_background needs a {BACKGROUND_CLASSES}-class head; {file} has '
                     f'{source_classes} classes')
  num_classes = source_classes - int(drop_background)
  aux = any(_is_aux(ours) and name in tensors for ours, (_, _, name) in expected.items())
  if not aux:
    expected = {k: v for k, v in expected.items() if not _is_aux(k)}
    unnamed = [k for k in unnamed if not _is_aux(k)]

  flat, missing, mismatched = _transfer(source, expected, tensors, shapes, num_classes,
                                       drop_background)
  missing += [f'(no {source.name} name)  for {ours}' for ours in unnamed]
  used = {name for _, _, name in expected.values()}
  ignored = sorted(n for n in tensors if n not in used and source.ignored(n))
  unexpected = sorted(set(tensors) - used - set(ignored), key=natural_key)
  problems = [('missing tensors (the model needs them, the file lacks them)', missing),
              ('unexpected tensors (in the file, unused by the model)', unexpected),
              ('shape mismatches', mismatched)]
  if any(items for _, items in problems):
    raise ValueError(_problem_message(file, source, arch, problems))
  model = build(arch, source, num_classes=num_classes, aux_logits=aux,
                avg_pool_include_pad=avg_pool_include_pad)
  return Conversion(model, unflatten(flat), source.name, file, source_classes,
                    drop_background, len(flat), ignored)


def _read(source: Source, file: str, arch: str) -> Mapping[str, Any]:
  """The file's tensors by name; any reader's error becomes one ValueError naming the file."""
  try:
    return source.read(file, arch)
  except ValueError:  # The readers' own: they name the file and the format.
    raise
  except Exception as e:  # h5py, safetensors and TensorFlow each raise their own kinds.
    raise ValueError(f'cannot read {file} as {source.name} weights: {type(e).__name__}: '
                     f'{" ".join(str(e).split())}') from e


def _transfer(source: Source, expected: dict[str, tuple[Layer, str, str]],
              tensors: Mapping[str, Any], shapes: dict[str, tuple[int, ...]], num_classes: int,
              drop_background: bool) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
  """Our variables in our layout from the file's tensors, with what is missing or misshapen."""
  flat, missing, mismatched = {}, [], []
  for ours, (layer, role, name) in expected.items():
    if name not in tensors:
      missing.append(f'{name}  (for {ours})')
      continue
    value = np.asarray(source.transform(layer, role, tensors[name]), np.float32)
    if drop_background and layer.path in CLASSIFIERS:
      value = value[..., 1:]
    want = shapes[ours]
    if layer.path in CLASSIFIERS:
      want = want[:-1] + (num_classes,)
    if value.shape != want:
      mismatched.append(f'{name}: {tuple(tensors[name].shape)} in the file, {value.shape} '
                        f'in our layout, but {ours} is {want}')
      continue
    flat[ours] = value
  return flat, missing, mismatched


def _problem_message(file: str, source: Source, arch: str,
                     problems: Sequence[tuple[str, Sequence[str]]]) -> str:
  lines = [f'cannot import {file} ({source.name}) as {arch}:']
  for title, items in problems:
    if not items:
      continue
    lines.append(f'  {len(items)} {title}:')
    lines += [f'    {item}' for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
      lines.append(f'    ... and {len(items) - MAX_LISTED} more')
  return '\n'.join(lines)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def save(conversion: Conversion, directory: str) -> None:
  """Writes `directory/variables/` (orbax, as `checkpointing.save_variables`) and
  `directory/model.json` (`metadata()`): what `init_from` and `load_converted` read."""
  os.makedirs(directory, exist_ok=True)
  checkpointing.save_variables(os.path.join(directory, VARIABLES_DIR), conversion.variables)
  with open(os.path.join(directory, MODEL_FILE), 'w') as f:
    json.dump(conversion.metadata(), f, indent=2)


def load_converted(directory: str, sharding: jax.sharding.Sharding | None = None,
                   **overrides: Any) -> tuple[Inception, dict[str, Any], dict[str, Any]]:
  """Reads a `save`d directory: (model, {'params', 'batch_stats'}, model.json contents).

  `overrides` are `create_model` options that leave the weights as they are
  (`dtype`, `scan_blocks`, `remat`, `dropout_rate`, ...); with `scan_blocks` the
  variables come back stacked. With `sharding` (e.g. replicated over a mesh of several
  processes) the variables are restored placed so.

  Raises:
    ValueError: if `directory` holds no model.json, or its variables do not fit.
  """
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(path):
    raise ValueError(f'{directory} holds no {MODEL_FILE}: converted weights are written by '
                     'python -m inception_jax.convert')
  with open(path) as f:
    meta = json.load(f)
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in meta['model'].items()}
  options.update(overrides)
  model = create_model(options.pop('name'), num_classes=meta['num_classes'], **options)
  unrolled = model.clone(scan_blocks=False)
  template = unflatten(model_variables(unrolled))
  if sharding is not None:
    template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                            template)
  variables = checkpointing.load_variables(os.path.join(directory, VARIABLES_DIR), template)
  variables = {k: variables[k] for k in ('params', 'batch_stats')}
  if model.scan_blocks:
    variables = {k: stack_repeats(v, model) for k, v in variables.items()}
  return model, variables, meta
