"""Search batch size and LR on one machine with several GPUs, on any backend.

`keras_batchtune.resolve_distribution()` picks what the backend
distributes with and says why:

- JAX: a `keras.distribution.DataParallel` over every GPU;
- TensorFlow: a `tf.distribute.MirroredStrategy` over the GPUs;
- PyTorch: None (Keras 3 trains a PyTorch model on one device);

and `BatchTuner` takes each of them as `distribution_strategy=`.

The searched batch is global, split evenly across the GPUs; the grid holds
only multiples of their count, the learning rate is coupled to the global
batch (linear rule, reference batch 256), and a batch that runs out of GPU
memory lowers the ceiling and is trained by gradient accumulation instead
(`accumulate=True`). The data are scikit-learn's bundled digits, shifted and
noised into 48,000 images (nothing is downloaded).

Usage:

```
KERAS_BACKEND=jax python examples/multi_gpu.py [--max-trials 12] [--epochs 8]
```

`--small` trains on 1,024 images (the test suite runs it that way on
virtual CPU devices).
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits  # bundled: nothing to download

import keras_batchtune


def load_data(small):
    """Digit images, enlarged by one-pixel shifts and noise unless small."""
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int32")
    x_val, y_val = images[1500:1796], labels[1500:1796]
    if small:
        return images[:1024], labels[:1024], x_val, y_val
    rng = np.random.default_rng(0)
    copies = []
    for _ in range(32):
        shift = rng.integers(-1, 2, size=2)
        shifted = np.roll(images[:1500], tuple(shift), axis=(1, 2))
        noise = rng.normal(0.0, 0.05, shifted.shape).astype("float32")
        copies.append(np.clip(shifted + noise, 0.0, 1.0))
    return np.concatenate(copies), np.tile(labels[:1500], 32), x_val, y_val


def build_model(hp):
    """A small convnet; its learning rate is the rate at global batch 256."""
    filters = hp.Choice("filters", [32, 64])
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(
                2 * filters, 3, padding="same", activation="relu"
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    learning_rate = hp.Float("learning_rate", 0.01, 0.3, sampling="log")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--directory", default="batchtune_runs")
    args = parser.parse_args(argv)
    print("backend:", keras.config.backend())

    distribution = keras_batchtune.resolve_distribution()
    x_train, y_train, x_val, y_val = load_data(args.small)

    tuner = keras_batchtune.BatchTuner(
        build_model,
        objective="val_accuracy",
        max_trials=args.max_trials,
        seed=0,
        min_batch_size=32,
        max_batch_size=2048,
        base_batch_size=256,
        lr_scaling="linear",
        accumulate=True,
        distribution_strategy=distribution,
        directory=args.directory,
        project_name="multi_gpu",
        overwrite=True,
    )
    tuner.search(
        x_train,
        y_train,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=0 if args.small else 1,
    )
    best = tuner.oracle.get_best_trials(1)[0]
    print("devices:", keras_batchtune.distribute.num_replicas(distribution))
    print("best global batch:", best.hyperparameters["batch_size"])
    print(
        "effective learning rate:",
        best.metrics.get_last_value("effective_learning_rate"),
    )
    return tuner


if __name__ == "__main__":
    main()
