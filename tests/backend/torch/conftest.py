"""Tests of the torch backend's modules: collected on that backend only."""

import keras

if keras.config.backend() != "torch":
    collect_ignore_glob = ["test_*.py"]
