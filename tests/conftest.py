import pytest

from inception_jax import extras
from tests.util import tiny_config

# What the tests of the TensorFlow side need beyond requirements-core.txt.
TF_PACKAGES = ('tensorflow', 'tensorflow_datasets')


@pytest.hookimpl(tryfirst=True)  # Before `-m` selects on the markers added here.
def pytest_collection_modifyitems(items):
  """Marks the tests of the tiny offline dataset `tf`, and skips `tf` tests without TFDS."""
  missing = [p for p in TF_PACKAGES if not extras.available(p)]
  for item in items:
    if 'tiny_data_dir' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.tf)
    if missing and item.get_closest_marker('tf'):
      item.add_marker(pytest.mark.skip(reason=f'needs {" and ".join(missing)}'))


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """The tiny offline dataset, generated once per test session."""
  from inception_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  data_dir = tmp_path_factory.mktemp('tfds')
  input_pipeline.get_dataset_info(tiny_config(data_dir))
  return str(data_dir)
