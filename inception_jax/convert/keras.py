"""Keras applications weights: InceptionV3 and InceptionResNetV2.

Keras reads its own files: the application is built with the file's class count
and `load_weights` fills it, whatever the format (the legacy `.h5` that
`keras.applications` downloads, a `.weights.h5`, a `.keras` archive); it checks
the file against the architecture itself. Keras uses its configured backend
(`KERAS_BACKEND`); none needs a TensorFlow graph.

Keras numbers its unnamed layers as it creates them (conv2d, conv2d_1, ...; the
first number depends on what was built before), and builds the convs in the
order our model runs them, so the n-th unnamed conv and the n-th unnamed
BatchNorm are our n-th conv. Named layers: the residual expansions
(`block35_<i>_conv`, with bias, no BatchNorm), `conv_7b` (+ `conv_7b_bn`) and the
classifier `predictions`. BatchNorm has no gamma (scale=False), epsilon 1e-3.
Neither application has an auxiliary head.
"""

from __future__ import annotations

import re
import zipfile
from typing import Any, Sequence

from inception_jax import extras
from inception_jax.convert.common import Layer, Source, Tensors

APPLICATIONS = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}
# Our residual stages and Keras's block names (the final linear block8 is block8_10).
RESIDUAL_BLOCKS = {'InceptionResNetA': 'block35', 'InceptionResNetB': 'block17',
                   'InceptionResNetC': 'block8'}
NAMED = {'Conv2d_7b_1x1': ('conv_7b', 'conv_7b_bn'), 'Block8/Conv2d_1x1': 'block8_10_conv',
         'Logits': 'predictions'}


def _classes(file: str) -> int:
  """The class count of a Keras weight file: the width of its only 2-D tensor."""
  import h5py  # pylint: disable=g-import-not-at-top

  widths = set()  # An optimizer's slots for the classifier, if saved, have its shape.
  def visit(_, obj):
    if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
      widths.add(obj.shape[1])

  if zipfile.is_zipfile(file):  # .keras: the weights are model.weights.h5 inside
    with zipfile.ZipFile(file) as archive, archive.open('model.weights.h5') as member, \
        h5py.File(member, 'r') as f:
      f.visititems(visit)
  else:
    with h5py.File(file, 'r') as f:
      f.visititems(visit)
  if len(widths) != 1:
    raise ValueError(f'{file} has classifier (2-D) tensors of {len(widths)} widths, not 1: '
                     'the Keras application with its top (include_top=True) is needed')
  return widths.pop()


def read(file: str, arch: str) -> Tensors:
  with extras.required('--from=keras', 'keras'):  # Which brings h5py, for `_classes`.
    import keras  # pylint: disable=g-import-not-at-top

  name = APPLICATIONS[arch]
  try:
    classes = _classes(file)
  except OSError as e:
    raise ValueError(f'cannot read {file} as a Keras weight file (.h5, .weights.h5 or '
                     f'.keras): {e}') from e
  model = getattr(keras.applications, name)(weights=None, classes=classes,
                                            classifier_activation=None)
  try:
    model.load_weights(file)
  except Exception as e:  # Keras raises several kinds for a file of another model.
    raise ValueError(f'Keras cannot load {file} into keras.applications.{name}: '
                     f'{type(e).__name__}: {e}') from e
  return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def _auto_named(layers: Sequence[str], prefix: str) -> list[str]:
  """Keras's unnamed layers of one kind, in the order it created them."""
  found = [(int(m.group(1) or 0), n) for n in layers
           if (m := re.fullmatch(rf'{prefix}(?:_(\d+))?', n))]
  return [n for _, n in sorted(found)]


def layer_names(arch: str, layers: Sequence[Layer], names: Sequence[str]) -> dict[str, Any]:
  del arch  # Both applications follow the same rules.
  keras_layers = {n.rsplit('/', 1)[0] for n in names}
  convs = iter(zip(_auto_named(keras_layers, 'conv2d'),
                   _auto_named(keras_layers, 'batch_normalization')))
  found = {}
  for layer in layers:
    top = layer.path.split('/')[0]
    if layer.path in NAMED:
      found[layer.path] = NAMED[layer.path]
    elif layer.kind == 'conv':  # InceptionResNetA_<i>/Conv2d_1x1
      stage, index = top.rsplit('_', 1)
      found[layer.path] = f'{RESIDUAL_BLOCKS[stage]}_{int(index) + 1}_conv'
    elif layer.kind == 'conv_bn' and top != 'AuxLogits':
      pair = next(convs, None)
      if pair is not None:
        found[layer.path] = pair
  return found


def tensor_names(layer: Layer, keras_layer: Any) -> dict[str, str]:
  if layer.kind != 'conv_bn':
    return {'kernel': f'{keras_layer}/kernel', 'bias': f'{keras_layer}/bias'}
  conv, bn = keras_layer
  return {'kernel': f'{conv}/kernel', 'gamma': f'{bn}/gamma', 'beta': f'{bn}/beta',
          'mean': f'{bn}/moving_mean', 'var': f'{bn}/moving_variance'}


SOURCE = Source(name='keras', archs=tuple(APPLICATIONS), bn_scale=False, read=read,
                layer_names=layer_names, tensor_names=tensor_names)
