"""The checkpoint names of the reference implementations, in the order our model runs its layers.

Written out from the references' sources (TF-Slim nets/, timm models/), independently of the
importers' rules (inception_jax/convert), so that tests/test_convert.py checks one against the
other.
"""


def _in(scope, names, sep='/'):
  return [f'{scope}{sep}{n}' for n in names]


SLIM_B = ['Branch_0/Conv2d_0a_1x1', 'Branch_1/Conv2d_0a_1x1', 'Branch_1/Conv2d_0b_1x7',
          'Branch_1/Conv2d_0c_7x1', 'Branch_2/Conv2d_0a_1x1', 'Branch_2/Conv2d_0b_7x1',
          'Branch_2/Conv2d_0c_1x7', 'Branch_2/Conv2d_0d_7x1', 'Branch_2/Conv2d_0e_1x7',
          'Branch_3/Conv2d_0b_1x1']
SLIM_REDUCTION_B = ['Branch_0/Conv2d_0a_1x1', 'Branch_0/Conv2d_1a_3x3', 'Branch_1/Conv2d_0a_1x1',
                    'Branch_1/Conv2d_0b_1x7', 'Branch_1/Conv2d_0c_7x1', 'Branch_1/Conv2d_1a_3x3']


def slim_names(arch):
  """{our layer path: slim scope} for every layer of the slim layout with its aux head."""
  stem = ['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1', 'Conv2d_4a_3x3']
  if arch == 'inception_v3':
    a = lambda b1: ['Branch_0/Conv2d_0a_1x1', *b1, 'Branch_2/Conv2d_0a_1x1',
                    'Branch_2/Conv2d_0b_3x3', 'Branch_2/Conv2d_0c_3x3', 'Branch_3/Conv2d_0b_1x1']
    c = lambda x: ['Branch_0/Conv2d_0a_1x1', 'Branch_1/Conv2d_0a_1x1', 'Branch_1/Conv2d_0b_1x3',
                   f'Branch_1/Conv2d_0{x}_3x1', 'Branch_2/Conv2d_0a_1x1', 'Branch_2/Conv2d_0b_3x3',
                   'Branch_2/Conv2d_0c_1x3', 'Branch_2/Conv2d_0d_3x1', 'Branch_3/Conv2d_0b_1x1']
    body = stem + _in('Mixed_5b', a(['Branch_1/Conv2d_0a_1x1', 'Branch_1/Conv2d_0b_5x5']))
    body += _in('Mixed_5c', a(['Branch_1/Conv2d_0b_1x1', 'Branch_1/Conv_1_0c_5x5']))
    body += _in('Mixed_5d', a(['Branch_1/Conv2d_0a_1x1', 'Branch_1/Conv2d_0b_5x5']))
    body += _in('Mixed_6a', ['Branch_0/Conv2d_1a_1x1', 'Branch_1/Conv2d_0a_1x1',
                             'Branch_1/Conv2d_0b_3x3', 'Branch_1/Conv2d_1a_1x1'])
    for block in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
      body += _in(block, SLIM_B)
    body += _in('Mixed_7a', SLIM_REDUCTION_B) + _in('Mixed_7b', c('b')) + _in('Mixed_7c', c('c'))
    heads = ['AuxLogits/Conv2d_1b_1x1', 'AuxLogits/Conv2d_2a_5x5', 'AuxLogits/Conv2d_2b_1x1',
             'Logits/Conv2d_1c_1x1']
  elif arch == 'inception_v4':
    body = stem[:3] + ['Mixed_3a/Branch_1/Conv2d_0a_3x3']
    body += _in('Mixed_4a', ['Branch_0/Conv2d_0a_1x1', 'Branch_0/Conv2d_1a_3x3',
                             'Branch_1/Conv2d_0a_1x1', 'Branch_1/Conv2d_0b_1x7',
                             'Branch_1/Conv2d_0c_7x1', 'Branch_1/Conv2d_1a_3x3'])
    body += ['Mixed_5a/Branch_0/Conv2d_1a_3x3']
    for block in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_5e'):
      body += _in(block, ['Branch_0/Conv2d_0a_1x1', 'Branch_1/Conv2d_0a_1x1',
                          'Branch_1/Conv2d_0b_3x3', 'Branch_2/Conv2d_0a_1x1',
                          'Branch_2/Conv2d_0b_3x3', 'Branch_2/Conv2d_0c_3x3',
                          'Branch_3/Conv2d_0b_1x1'])
    body += _in('Mixed_6a', ['Branch_0/Conv2d_1a_3x3', 'Branch_1/Conv2d_0a_1x1',
                             'Branch_1/Conv2d_0b_3x3', 'Branch_1/Conv2d_1a_3x3'])
    for block in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_6f', 'Mixed_6g',
                  'Mixed_6h'):
      body += _in(block, SLIM_B)
    body += _in('Mixed_7a', SLIM_REDUCTION_B)
    for block in ('Mixed_7b', 'Mixed_7c', 'Mixed_7d'):
      body += _in(block, ['Branch_0/Conv2d_0a_1x1', 'Branch_1/Conv2d_0a_1x1',
                          'Branch_1/Conv2d_0b_1x3', 'Branch_1/Conv2d_0c_3x1',
                          'Branch_2/Conv2d_0a_1x1', 'Branch_2/Conv2d_0b_3x1',
                          'Branch_2/Conv2d_0c_1x3', 'Branch_2/Conv2d_0d_1x3',
                          'Branch_2/Conv2d_0e_3x1', 'Branch_3/Conv2d_0b_1x1'])
    heads = ['AuxLogits/Conv2d_1b_1x1', 'AuxLogits/Conv2d_2a', 'AuxLogits/Aux_logits',
             'Logits/Logits']
  else:
    body = stem + _in('Mixed_5b', ['Branch_0/Conv2d_1x1', 'Branch_1/Conv2d_0a_1x1',
                                   'Branch_1/Conv2d_0b_5x5', 'Branch_2/Conv2d_0a_1x1',
                                   'Branch_2/Conv2d_0b_3x3', 'Branch_2/Conv2d_0c_3x3',
                                   'Branch_3/Conv2d_0b_1x1'])
    for i in range(1, 11):
      body += _in(f'Repeat/block35_{i}', ['Branch_0/Conv2d_1x1', 'Branch_1/Conv2d_0a_1x1',
                                          'Branch_1/Conv2d_0b_3x3', 'Branch_2/Conv2d_0a_1x1',
                                          'Branch_2/Conv2d_0b_3x3', 'Branch_2/Conv2d_0c_3x3',
                                          'Conv2d_1x1'])
    body += _in('Mixed_6a', ['Branch_0/Conv2d_1a_3x3', 'Branch_1/Conv2d_0a_1x1',
                             'Branch_1/Conv2d_0b_3x3', 'Branch_1/Conv2d_1a_3x3'])
    for i in range(1, 21):
      body += _in(f'Repeat_1/block17_{i}', ['Branch_0/Conv2d_1x1', 'Branch_1/Conv2d_0a_1x1',
                                            'Branch_1/Conv2d_0b_1x7', 'Branch_1/Conv2d_0c_7x1',
                                            'Conv2d_1x1'])
    body += _in('Mixed_7a', ['Branch_0/Conv2d_0a_1x1', 'Branch_0/Conv2d_1a_3x3',
                             'Branch_1/Conv2d_0a_1x1', 'Branch_1/Conv2d_1a_3x3',
                             'Branch_2/Conv2d_0a_1x1', 'Branch_2/Conv2d_0b_3x3',
                             'Branch_2/Conv2d_1a_3x3'])
    for block in [f'Repeat_2/block8_{i}' for i in range(1, 10)] + ['Block8']:
      body += _in(block, ['Branch_0/Conv2d_1x1', 'Branch_1/Conv2d_0a_1x1',
                          'Branch_1/Conv2d_0b_1x3', 'Branch_1/Conv2d_0c_3x1', 'Conv2d_1x1'])
    body += ['Conv2d_7b_1x1']
    heads = ['AuxLogits/Conv2d_1b_1x1', 'AuxLogits/Conv2d_2a_5x5', 'AuxLogits/Logits',
             'Logits/Logits']
  return body, dict(zip(['AuxLogits/Conv2d_1b_1x1', 'AuxLogits/Conv2d_2a_5x5',
                         'AuxLogits/Logits', 'Logits'], heads))


def _branch_seq(branch, n):
  return [f'branch{branch}.{j}' for j in range(n)]


def timm_names(arch):
  """Like `slim_names`, in timm's module names."""
  if arch == 'inception_v3':
    a = ['branch1x1', 'branch5x5_1', 'branch5x5_2', 'branch3x3dbl_1', 'branch3x3dbl_2',
         'branch3x3dbl_3', 'branch_pool']
    b = ['branch1x1', 'branch7x7_1', 'branch7x7_2', 'branch7x7_3', 'branch7x7dbl_1',
         'branch7x7dbl_2', 'branch7x7dbl_3', 'branch7x7dbl_4', 'branch7x7dbl_5', 'branch_pool']
    c = ['branch1x1', 'branch3x3_1', 'branch3x3_2a', 'branch3x3_2b', 'branch3x3dbl_1',
         'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b', 'branch_pool']
    body = ['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1', 'Conv2d_4a_3x3']
    for block in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
      body += _in(block, a, '.')
    body += _in('Mixed_6a', ['branch3x3', 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'],
                '.')
    for block in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
      body += _in(block, b, '.')
    body += _in('Mixed_7a', ['branch3x3_1', 'branch3x3_2', 'branch7x7x3_1', 'branch7x7x3_2',
                             'branch7x7x3_3', 'branch7x7x3_4'], '.')
    body += _in('Mixed_7b', c, '.') + _in('Mixed_7c', c, '.')
    heads = {'AuxLogits/Conv2d_1b_1x1': 'AuxLogits.conv0',
             'AuxLogits/Conv2d_2a_5x5': 'AuxLogits.conv1', 'AuxLogits/Logits': 'AuxLogits.fc',
             'Logits': 'fc'}
  elif arch == 'inception_v4':
    body = ['features.0', 'features.1', 'features.2', 'features.3.conv']
    body += _in('features.4', _branch_seq(0, 2) + _branch_seq(1, 4), '.') + ['features.5.conv']
    a = ['branch0'] + _branch_seq(1, 2) + _branch_seq(2, 3) + ['branch3.1']
    b = ['branch0'] + _branch_seq(1, 3) + _branch_seq(2, 5) + ['branch3.1']
    c = ['branch0', 'branch1_0', 'branch1_1a', 'branch1_1b', 'branch2_0', 'branch2_1',
         'branch2_2', 'branch2_3a', 'branch2_3b', 'branch3.1']
    blocks = [a] * 4 + [['branch0'] + _branch_seq(1, 3)] + [b] * 7
    blocks += [_branch_seq(0, 2) + _branch_seq(1, 4)] + [c] * 3
    for i, block in enumerate(blocks):
      body += _in(f'features.{6 + i}', block, '.')
    heads = {'Logits': 'last_linear'}
  else:
    body = ['conv2d_1a', 'conv2d_2a', 'conv2d_2b', 'conv2d_3b', 'conv2d_4a']
    body += _in('mixed_5b', ['branch0'] + _branch_seq(1, 2) + _branch_seq(2, 3) + ['branch3.1'],
                '.')
    for i in range(10):
      body += _in(f'repeat.{i}', ['branch0'] + _branch_seq(1, 2) + _branch_seq(2, 3) +
                  ['conv2d'], '.')
    body += _in('mixed_6a', ['branch0'] + _branch_seq(1, 3), '.')
    for i in range(20):
      body += _in(f'repeat_1.{i}', ['branch0'] + _branch_seq(1, 3) + ['conv2d'], '.')
    body += _in('mixed_7a', _branch_seq(0, 2) + _branch_seq(1, 2) + _branch_seq(2, 3), '.')
    for block in [f'repeat_2.{i}' for i in range(9)] + ['block8']:
      body += _in(block, ['branch0'] + _branch_seq(1, 3) + ['conv2d'], '.')
    body += ['conv2d_7b']
    heads = {'Logits': 'classif'}
  return body, heads
