"""Tests of the jax backend's modules: collected on that backend only."""

import keras

if keras.config.backend() != "jax":
    collect_ignore_glob = ["test_*.py"]
