"""Importers for released Inception weights: Keras applications, timm, TF-Slim.

    python -m inception_jax.convert --from=slim --source=inception_resnet_v2_2016_08_30.ckpt \
        --model=inception_resnet_v2 --out=weights/inception_resnet_v2

writes `DIR/variables/` and `DIR/model.json`, which `config.init_from=DIR`
(fine-tuning), `experiments.evaluate --weights=DIR` and `load_converted(DIR)` read.
"""

from __future__ import annotations

from inception_jax.convert import keras, slim, timm
from inception_jax.convert.common import (Conversion, Source, load_converted, save)
from inception_jax.convert.common import convert as _convert

__all__ = ['SOURCES', 'Conversion', 'convert', 'load_converted', 'save']

SOURCES: dict[str, Source] = {s.name: s for s in (keras.SOURCE, timm.SOURCE, slim.SOURCE)}


def convert(source: str, file: str, model: str, *, drop_background: bool = False,
            avg_pool_include_pad: bool = False) -> Conversion:
  """Imports `file`, weights of network `model` saved by `source` ('keras', 'timm' or
  'slim'); see `common.convert`."""
  if source not in SOURCES:
    raise ValueError(f'unknown source {source!r}; valid sources: {", ".join(SOURCES)}')
  return _convert(SOURCES[source], file, model, drop_background=drop_background,
                  avg_pool_include_pad=avg_pool_include_pad)
