import pytest

from inception_jax.data import input_pipeline
from tests.util import tiny_config


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """The tiny offline dataset, generated once per test session."""
  data_dir = tmp_path_factory.mktemp('tfds')
  input_pipeline.get_dataset_info(tiny_config(data_dir))
  return str(data_dir)
