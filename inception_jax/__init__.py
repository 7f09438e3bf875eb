"""Inception-v4, Inception-ResNet and Inception-v3 in JAX/Flax (Szegedy et al. 2016)."""

from inception_jax import extras

extras.let_clu_import_without_tensorflow()  # Before any of the package's modules imports clu.
