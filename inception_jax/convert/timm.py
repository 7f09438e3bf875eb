"""timm safetensors: inception_v3, inception_v4 and inception_resnet_v2.

Read with the safetensors numpy API (no PyTorch). Each conv of timm is a
conv -> BatchNorm module: `<name>.conv.weight` (OIHW) and an affine BatchNorm
`<name>.bn.{weight,bias,running_mean,running_var}` (gamma = weight, epsilon 1e-3);
the residual expansions `<block>.conv2d.{weight,bias}` and the classifiers (`fc`,
`last_linear`, `classif`; Linear weights are (out, in)) are plain modules.

Padding: timm pads explicitly and symmetrically (1 for a 3x3, (0, 3) for a 1x7)
where TF-Slim pads SAME. The two agree for every conv and pool of these networks:
every SAME one has stride 1 and an odd kernel, every stride-2 one is VALID
(tests/test_convert.py checks the padding of every op). One difference is left,
in inception_v3 only: timm (after torchvision) averages its 3x3 pools over the
zero padding too, TF-Slim and our model do not, so activations at the borders
differ slightly from timm's own outputs; its TF-ported weights (`tf_in1k`) were
trained with TensorFlow's pooling, which ours reproduces.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from inception_jax.convert.common import Layer, Source, Tensors, block_names

Branches = list[list[str]]


def _seq(branch: int, count: int) -> list[str]:
  """The convs of a branch that timm builds as nn.Sequential: `branch<b>.<j>`."""
  return [f'branch{branch}.{j}' for j in range(count)]


# timm's names of each block's convs, branch by branch in our order; a branch that
# starts with a pool is a Sequential whose conv is `.1`.
V3_BLOCKS: dict[str, Branches] = {
    'A': [['branch1x1'], ['branch5x5_1', 'branch5x5_2'],
          ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'], ['branch_pool']],
    'ReductionA': [['branch3x3'], ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3']],
    'B': [['branch1x1'], ['branch7x7_1', 'branch7x7_2', 'branch7x7_3'],
          [f'branch7x7dbl_{i}' for i in range(1, 6)], ['branch_pool']],
    'ReductionB': [['branch3x3_1', 'branch3x3_2'], [f'branch7x7x3_{i}' for i in range(1, 5)]],
    'C': [['branch1x1'], ['branch3x3_1', 'branch3x3_2a', 'branch3x3_2b'],
          ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b'],
          ['branch_pool']],
}
V3_STAGES = {'Mixed_5b': 'A', 'Mixed_5c': 'A', 'Mixed_5d': 'A', 'Mixed_6a': 'ReductionA',
             'Mixed_6b': 'B', 'Mixed_6c': 'B', 'Mixed_6d': 'B', 'Mixed_6e': 'B',
             'Mixed_7a': 'ReductionB', 'Mixed_7b': 'C', 'Mixed_7c': 'C'}
V4_BLOCKS: dict[str, Branches] = {
    'InceptionA': [['branch0'], _seq(1, 2), _seq(2, 3), ['branch3.1']],
    'ReductionA': [['branch0'], _seq(1, 3)],
    'InceptionB': [['branch0'], _seq(1, 3), _seq(2, 5), ['branch3.1']],
    'ReductionB': [_seq(0, 2), _seq(1, 4)],
    'InceptionC': [['branch0'], ['branch1_0', 'branch1_1a', 'branch1_1b'],
                   ['branch2_0', 'branch2_1', 'branch2_2', 'branch2_3a', 'branch2_3b'],
                   ['branch3.1']],
}
IR2_BLOCKS: dict[str, Branches] = {
    'Mixed_5b': [['branch0'], _seq(1, 2), _seq(2, 3), ['branch3.1']],
    'InceptionResNetA': [['branch0'], _seq(1, 2), _seq(2, 3)],
    'ReductionA': [['branch0'], _seq(1, 3)],
    'InceptionResNetB': [['branch0'], _seq(1, 3)],
    'ReductionB': [_seq(0, 2), _seq(1, 2), _seq(2, 3)],
    'InceptionResNetC': [['branch0'], _seq(1, 3)],
    'Block8': [['branch0'], _seq(1, 3)],
}
IR2_PREFIXES = {'Mixed_5b': 'mixed_5b', 'ReductionA': 'mixed_6a', 'ReductionB': 'mixed_7a',
                'Block8': 'block8'}
IR2_REPEATED = {'InceptionResNetA': 'repeat', 'InceptionResNetB': 'repeat_1',
                'InceptionResNetC': 'repeat_2'}

# Per network: (our block, timm prefix, its branches) and {our layer: timm name}.
Tables = tuple[list[tuple[str, str, Branches]], dict[str, str]]


def _inception_v3(blocks: Sequence[str]) -> Tables:
  tables = [('Stem', '', [['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1',
                           'Conv2d_4a_3x3']])]
  tables += [(b, b, V3_BLOCKS[V3_STAGES[b]]) for b in blocks if b in V3_STAGES]
  single = {'AuxLogits/Conv2d_1b_1x1': 'AuxLogits.conv0',
            'AuxLogits/Conv2d_2a_5x5': 'AuxLogits.conv1', 'AuxLogits/Logits': 'AuxLogits.fc',
            'Logits': 'fc'}
  return tables, single


def _inception_v4(blocks: Sequence[str]) -> Tables:
  # timm's `features` Sequential: six stem modules, then one per block (our stages
  # after 'Stem', in order).
  tables = [('Stem/Conv2d', '', [['features.0', 'features.1', 'features.2']]),
            ('Stem/Mixed_3a', 'features.3', [[], ['conv']]),
            ('Stem/Mixed_4a', 'features.4', [_seq(0, 2), _seq(1, 4)]),
            ('Stem/Mixed_5a', 'features.5', [['conv']])]
  tables += [(b, f'features.{5 + i}', V4_BLOCKS[b.split('_')[0]])
             for i, b in enumerate(blocks) if i > 0 and b.split('_')[0] in V4_BLOCKS]
  return tables, {'Logits': 'last_linear'}


def _inception_resnet_v2(blocks: Sequence[str]) -> Tables:
  tables = [('Stem', '', [['conv2d_1a', 'conv2d_2a', 'conv2d_2b', 'conv2d_3b', 'conv2d_4a']])]
  single = {'Conv2d_7b_1x1': 'conv2d_7b', 'Logits': 'classif'}
  for b in blocks:
    stage, _, index = b.rpartition('_')
    if stage in IR2_REPEATED:
      prefix, kind = f'{IR2_REPEATED[stage]}.{index}', stage
    elif b in IR2_PREFIXES:
      prefix, kind = IR2_PREFIXES[b], b
    else:
      continue
    tables.append((b, prefix, IR2_BLOCKS[kind]))
    single[f'{b}/Conv2d_1x1'] = f'{prefix}.conv2d'  # the residual expansion, if any
  return tables, single


ARCHS = {'inception_v3': _inception_v3, 'inception_v4': _inception_v4,
         'inception_resnet_v2': _inception_resnet_v2}


def read(file: str, arch: str) -> Tensors:
  del arch
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  try:
    return load_file(file)
  except Exception as e:  # safetensors raises its own error types and OSError.
    raise ValueError(f'cannot read {file} as safetensors ({type(e).__name__}: {e}); timm '
                     'weights on the Hugging Face hub come as model.safetensors') from e


def layer_names(arch: str, layers: Sequence[Layer], names: Sequence[str]) -> dict[str, Any]:
  del names  # timm's names follow from the architecture alone.
  blocks = list(dict.fromkeys(layer.path.split('/')[0] for layer in layers))
  tables, single = ARCHS[arch](blocks)
  found = {}
  for ours, prefix, branches in tables:
    found.update(block_names(layers, ours, branches,
                             lambda n, p=prefix: f'{p}.{n}' if p else n))
  paths = {layer.path for layer in layers}
  found.update({ours: theirs for ours, theirs in single.items() if ours in paths})
  return found


def tensor_names(layer: Layer, module: str) -> dict[str, str]:
  if layer.kind != 'conv_bn':
    return {'kernel': f'{module}.weight', 'bias': f'{module}.bias'}
  return {'kernel': f'{module}.conv.weight', 'gamma': f'{module}.bn.weight',
          'beta': f'{module}.bn.bias', 'mean': f'{module}.bn.running_mean',
          'var': f'{module}.bn.running_var'}


def transform(layer: Layer, role: str, x: np.ndarray) -> np.ndarray:
  del layer
  if role == 'kernel':
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x.T  # OIHW -> HWIO, (out, in) -> (in, out)
  return x


SOURCE = Source(name='timm', archs=tuple(ARCHS), bn_scale=True, read=read,
                layer_names=layer_names, tensor_names=tensor_names, transform=transform,
                ignored=lambda name: name.endswith('.num_batches_tracked'))
