"""TF-Slim checkpoints: inception_v3, inception_v4 and inception_resnet_v2 (`.ckpt`).

Read with `tf.train.load_checkpoint` (the 2016 releases' V1 files and V2
prefixes alike). Slim names each conv by scope, e.g.
`InceptionV3/Mixed_6b/Branch_2/Conv2d_0b_7x1/weights` with
`.../BatchNorm/{beta,moving_mean,moving_variance}` (no gamma: scale=False, epsilon
1e-3); the residual expansions and the classifiers have `weights` and `biases`.
The scope names are irregular (`Conv_1_0c_5x5`, `Conv2d_1a_1x1` for a 3x3), but in
every scope they sort, by name, in the order the layers run: our layers are
matched to them in that order, scope by scope. The heads have 1001 classes,
class 0 being 'background'.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from inception_jax import extras
from inception_jax.convert.common import (CLASSIFIERS, Layer, Source, Tensors,
                                          natural_key)

SCOPES = {'inception_v3': 'InceptionV3', 'inception_v4': 'InceptionV4',
          'inception_resnet_v2': 'InceptionResnetV2'}
# Our stages that slim names otherwise; a repeated stage's i-th block.
STAGES = {'ReductionA': 'Mixed_6a', 'ReductionB': 'Mixed_7a'}
REPEATED = {
    'InceptionA': lambda i: f'Mixed_5{"bcdefgh"[i]}',
    'InceptionB': lambda i: f'Mixed_6{"bcdefgh"[i]}',
    'InceptionC': lambda i: f'Mixed_7{"bcdefgh"[i]}',
    'InceptionResNetA': lambda i: f'Repeat/block35_{i + 1}',  # slim.repeat's scopes
    'InceptionResNetB': lambda i: f'Repeat_1/block17_{i + 1}',
    'InceptionResNetC': lambda i: f'Repeat_2/block8_{i + 1}',
}
# Training state that a checkpoint may hold besides the weights.
NOT_WEIGHTS = re.compile(
    r'(^|/)(global_step|beta[12]_power|(RMSProp|Momentum|Adam|ExponentialMovingAverage)(_\d+)?)$')


def read(file: str, arch: str) -> Tensors:
  del arch
  with extras.required('--from=slim', 'tensorflow'):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    reader = tf.train.load_checkpoint(file)
  except Exception as e:  # TensorFlow raises several kinds for a bad path or file.
    raise ValueError(f'cannot read {file} as a TensorFlow checkpoint: {type(e).__name__}: '
                     f'{e}') from e
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _block_scope(block: str) -> str:
  stage, _, index = block.rpartition('_')
  if stage in REPEATED and index.isdigit():
    return REPEATED[stage](int(index))
  return STAGES.get(block, block)


def _group(layer: Layer) -> tuple[str, bool]:
  """The slim scope holding `layer`'s own scope, and whether it is a conv with BatchNorm."""
  if layer.path in CLASSIFIERS:
    return layer.path.split('/')[0], False
  parts = layer.path.split('/')[:-1]
  if parts[:1] == ['Stem']:
    parts = parts[1:]
    if parts[:1] in (['Branch_0'], ['Conv2d']):  # The stems' plain convs: slim's top level.
      parts = []
  elif parts:
    parts[0] = _block_scope(parts[0])
  return '/'.join(parts), layer.kind == 'conv_bn'


def layer_names(arch: str, layers: Sequence[Layer], names: Sequence[str]) -> dict[str, Any]:
  prefix, names = SCOPES[arch] + '/', set(names)
  slim_groups: dict[tuple[str, bool], list[str]] = {}
  for name in names:
    if name.startswith(prefix) and name.endswith('/weights'):
      scope = name[len(prefix):-len('/weights')]
      parent = scope.rpartition('/')[0]
      has_bn = f'{prefix}{scope}/BatchNorm/moving_mean' in names
      slim_groups.setdefault((parent, has_bn), []).append(scope)
  our_groups: dict[tuple[str, bool], list[str]] = {}
  for layer in layers:
    our_groups.setdefault(_group(layer), []).append(layer.path)
  found = {}
  for group, ours in our_groups.items():
    theirs = sorted(slim_groups.get(group, []), key=natural_key)
    if len(theirs) == len(ours):  # Otherwise the check reports the group's layers.
      found.update({o: prefix + t for o, t in zip(ours, theirs)})
  return found


def tensor_names(layer: Layer, scope: str) -> dict[str, str]:
  if layer.kind != 'conv_bn':
    return {'kernel': f'{scope}/weights', 'bias': f'{scope}/biases'}
  bn = f'{scope}/BatchNorm'
  return {'kernel': f'{scope}/weights', 'gamma': f'{bn}/gamma', 'beta': f'{bn}/beta',
          'mean': f'{bn}/moving_mean', 'var': f'{bn}/moving_variance'}


def transform(layer: Layer, role: str, x: np.ndarray) -> np.ndarray:
  if layer.kind == 'dense' and role == 'kernel' and x.ndim == 4 and x.shape[:2] == (1, 1):
    return x.reshape(x.shape[2:])  # Inception-v3's heads are 1x1 convs.
  return x


SOURCE = Source(name='slim', archs=tuple(SCOPES), bn_scale=False, read=read,
                layer_names=layer_names, tensor_names=tensor_names, transform=transform,
                ignored=lambda name: bool(NOT_WEIGHTS.search(name)))
