"""The JAX gradient-noise probe: one compilation, `keras.distribution`."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

from keras_batchtune.backend.jax import gradients


def _dropout_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_the_probe_compiles_once_for_every_call():
    model = _dropout_model()
    rng = np.random.default_rng(0)
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=4, large_batch_size=32
    )
    measured = []
    for _ in range(3):
        x = rng.normal(size=(32, 8)).astype("float32")
        y = rng.normal(size=(32, 1)).astype("float32")
        measured.append(probe(x, y))
        # A training step between calls changes the weights, not the shapes.
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert len(set(measured)) == 3
    assert probe._function._cache_size() == 1


_DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np
    from keras_batchtune import gradients

    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    kwargs = dict(small_batch_size=16, large_batch_size=128,
                  num_batches=4, shuffle=False)

    def measure():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return gradients.gradient_noise_scale(model, (x, y), **kwargs)

    keras.distribution.set_distribution(keras.distribution.DataParallel())
    parallel = measure()
    keras.distribution.set_distribution(None)
    single = measure()
    np.testing.assert_allclose(parallel, single, rtol=1e-5)
    print("OK", parallel.b_simple)
    """
)


def test_a_data_parallel_distribution_measures_the_same():
    # Two virtual CPU devices need XLA_FLAGS before JAX starts: a new
    # process. The timeout only stops a hang.
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK"), result.stdout
