"""The demo: tune batch size and learning rate of an MLP on bundled digits."""

import os

import keras

from keras_batchtune import report
from keras_batchtune.tuner import BatchTuner


def load_digits_split(seed=0):
    """Loads scikit-learn's bundled handwritten digits (nothing downloaded).

    Example:

    ```python
    x_train, y_train, x_val, y_val = load_digits_split()
    ```

    Args:
        seed: Integer seed of the shuffle before the 80/20 split.

    Returns:
        `(x_train, y_train, x_val, y_val)`: 8x8 images flattened to 64
        features in [0, 1], and integer labels 0-9.
    """
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype("float32")
    labels = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(features))
    features, labels = features[order], labels[order]
    split = int(0.8 * len(features))
    return features[:split], labels[:split], features[split:], labels[split:]


def build_digits_model(hp):
    """Builds the demo's MLP; the learning rate is the one for batch 32.

    Args:
        hp: A `keras_tuner.HyperParameters`.

    Returns:
        A compiled `keras.Model`.
    """
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(
                hp.Int("units", 64, 256, step=64), activation="relu"
            ),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    learning_rate = hp.Float("learning_rate", 0.01, 0.1, sampling="log")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def run_demo(max_trials=10, epochs=10, logdir="batchtune_runs", seed=0):
    """Runs the demo search and prints the table of trials.

    Example:

    ```python
    tuner = run_demo(max_trials=4, epochs=3)
    ```

    Args:
        max_trials: Integer, the number of trials.
        epochs: Integer, epochs per trial.
        logdir: Directory for the tuner project and the TensorBoard logs.
        seed: Integer seed of the search and of keras.

    Returns:
        The `BatchTuner`, after the search.
    """
    keras.utils.set_random_seed(seed)
    print(
        f"keras_batchtune demo on the Keras {keras.config.backend()} backend "
        "(set KERAS_BACKEND=tensorflow, jax or torch to choose)."
    )
    x_train, y_train, x_val, y_val = load_digits_split(seed)
    tuner = BatchTuner(
        build_digits_model,
        objective="val_accuracy",
        max_trials=max_trials,
        seed=seed,
        min_batch_size=8,
        max_batch_size=512,
        lr_scaling="linear",
        directory=logdir,
        project_name="digits",
        overwrite=True,
    )
    tensorboard_dir = os.path.join(logdir, "tensorboard")
    tuner.search(
        x_train,
        y_train,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.TensorBoard(tensorboard_dir)],
        verbose=1,
    )
    print()
    print(report.trials_table(tuner.oracle))
    print()
    print(report.best_line(tuner.oracle))
    print(report.front_line(tuner.oracle))
    for notice in report.range_notices(tuner.oracle):
        print(notice)
    print()
    print("Next:")
    print(f"  tensorboard --logdir {tensorboard_dir}")
    print(f"  keras-batchtune report {tuner.project_dir}")
    return tuner
