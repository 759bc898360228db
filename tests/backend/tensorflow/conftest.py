"""Tests of the tensorflow backend's modules: collected on that backend only."""

import keras

if keras.config.backend() != "tensorflow":
    collect_ignore_glob = ["test_*.py"]
