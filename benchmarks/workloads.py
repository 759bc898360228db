"""Compute-bound workloads where the batch size matters, at any scale.

Two workloads, each defined once with a `scale` so that the same definition
serves a smoke test (`scale` 0.01), the 2-core CPU (0.25) and a GPU (1.0):

- `convnet`: scikit-learn's bundled digits made into 32x32 images (each 8x8
  digit upsampled 4x, shifted by up to 4 pixels, with Gaussian noise of 0.1),
  1,500 originals in `48 * scale` transformed copies for training (48,000 at
  scale 1; the 296 held-out originals in 4 copies, 1,184 images, for
  validation); a convnet 32-64-64 with global average pooling; SGD with
  momentum 0.9, LR 0.05 at batch 32.
- `transformer`: sequences of 64 tokens over 16 symbols, in which symbols 1
  and 2 each occur once at random places; the label says which comes first
  (50/50; 40,000 training sequences at scale 1, 4,000 held out); two
  transformer blocks (model width 64, 4 heads, feed-forward 128, learned
  positions); Adam, LR 0.001 at batch 32.

Nothing is downloaded. `make_data(scale)` returns numpy arrays
`(x, y, x_val, y_val)`; `make_model(learning_rate)` a compiled model with
`accuracy` as its metric. Every workload has its `target` validation
accuracy for time-to-target measurements and the drop-in LR decade (centred
on its base LR) for searches.

Usage (prints each workload's shapes and one fit's epoch times):

```
python benchmarks/workloads.py --scale 0.25 --epochs 2
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

REFERENCE_BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Workload:
    """One workload.

    Attributes:
        name: Its name.
        make_data: `scale -> (x, y, x_val, y_val)`.
        make_model: `learning_rate -> compiled keras.Model`.
        base_learning_rate: A learning rate that works at batch 32.
        target: The validation accuracy a time-to-target run waits for.
        epochs: The full training budget, in epochs.
    """

    name: str
    make_data: Callable
    make_model: Callable
    base_learning_rate: float
    target: float
    epochs: int

    objective = "val_accuracy"
    direction = "max"

    def within_one_point(self, value, optimum):
        """Within 1 point (0.01) of `optimum`."""
        return value is not None and value >= optimum - 0.01 - 1e-6

    @property
    def learning_rate_range(self):
        """The decade centred on the base LR (a search's drop-in range)."""
        return (
            self.base_learning_rate / 10**0.5,
            self.base_learning_rate * 10**0.5,
        )


def _compile(model, optimizer):
    model.compile(
        optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _transformed_digits(images, copies, rng):
    """`copies` of `images` upsampled to 32x32, shifted and noisy."""
    large = np.kron(images, np.ones((1, 4, 4), dtype="float32"))
    out = []
    for _ in range(copies):
        shifts = rng.integers(-4, 5, size=(len(large), 2))
        moved = np.stack(
            [
                np.roll(image, tuple(shift), axis=(0, 1))
                for image, shift in zip(large, shifts)
            ]
        )
        noise = rng.normal(0.0, 0.1, moved.shape).astype("float32")
        out.append(np.clip(moved + noise, 0.0, 1.0))
    return np.concatenate(out)[..., None]


def convnet_workload():
    def make_data(scale=1.0):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype("float32")
        labels = digits.target.astype("int32")
        rng = np.random.default_rng(0)
        copies = max(1, round(48 * scale))
        x = _transformed_digits(images[:1500], copies, rng)
        y = np.tile(labels[:1500], copies)
        x_val = _transformed_digits(images[1500:1796], 4, rng)
        y_val = np.tile(labels[1500:1796], 4)
        order = rng.permutation(len(x))
        return x[order], y[order], x_val, y_val

    def make_model(learning_rate):
        layers = keras.layers
        model = keras.Sequential(
            [
                keras.Input((32, 32, 1)),
                layers.Conv2D(32, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(2),
                layers.Conv2D(64, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(2),
                layers.Conv2D(64, 3, padding="same", activation="relu"),
                layers.GlobalAveragePooling2D(),
                layers.Dense(10, activation="softmax"),
            ]
        )
        return _compile(
            model, keras.optimizers.SGD(learning_rate, momentum=0.9)
        )

    return Workload(
        "convnet", make_data, make_model, 0.05, target=0.95, epochs=6
    )


class _TransformerBlock(keras.layers.Layer):
    def __init__(self, width, heads, hidden, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(heads, width // heads)
        self.feed_forward = keras.Sequential(
            [
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(width),
            ]
        )
        self.norm_attention = keras.layers.LayerNormalization()
        self.norm_feed_forward = keras.layers.LayerNormalization()

    def call(self, inputs):
        attended = self.attention(inputs, inputs)
        inputs = self.norm_attention(inputs + attended)
        return self.norm_feed_forward(inputs + self.feed_forward(inputs))


class _PositionEmbedding(keras.layers.Layer):
    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal"
        )

    def call(self, inputs):
        return inputs + self.positions


def transformer_workload(length=64, symbols=16, width=64):
    def make_data(scale=1.0):
        rng = np.random.default_rng(0)
        total = max(64, round(44000 * scale))
        tokens = rng.integers(3, symbols, size=(total, length))
        # Two distinct places per sequence, for symbols 1 and 2.
        places = np.argsort(rng.random((total, length)), axis=1)[:, :2]
        rows = np.arange(total)
        tokens[rows, places[:, 0]] = 1
        tokens[rows, places[:, 1]] = 2
        labels = (places[:, 0] < places[:, 1]).astype("int32")
        split = total - max(32, total // 11)
        return (
            tokens[:split].astype("int32"),
            labels[:split],
            tokens[split:].astype("int32"),
            labels[split:],
        )

    def make_model(learning_rate):
        model = keras.Sequential(
            [
                keras.Input((length,), dtype="int32"),
                keras.layers.Embedding(symbols, width),
                _PositionEmbedding(),
                _TransformerBlock(width, 4, 2 * width),
                _TransformerBlock(width, 4, 2 * width),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        return _compile(model, keras.optimizers.Adam(learning_rate))

    return Workload(
        "transformer", make_data, make_model, 0.001, target=0.95, epochs=6
    )


WORKLOADS = {
    workload.name: workload
    for workload in (convnet_workload(), transformer_workload())
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=sorted(WORKLOADS),
        default=list(WORKLOADS),
    )
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=REFERENCE_BATCH_SIZE)
    args = parser.parse_args()
    for name in args.workloads:
        workload = WORKLOADS[name]
        x, y, x_val, y_val = workload.make_data(args.scale)
        model = workload.make_model(workload.base_learning_rate)
        epoch_ends = []
        start = time.perf_counter()
        history = model.fit(
            x,
            y,
            batch_size=args.batch_size,
            epochs=args.epochs or workload.epochs,
            validation_data=(x_val, y_val),
            verbose=0,
            callbacks=[
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda epoch, logs: epoch_ends.append(
                        time.perf_counter() - start
                    )
                )
            ],
        ).history
        print(
            f"{name}: train {x.shape}, validation {x_val.shape}; epochs end "
            f"at {', '.join(f'{s:.1f}' for s in epoch_ends)} s; val_accuracy "
            f"{', '.join(f'{a:.3f}' for a in history['val_accuracy'])}",
            flush=True,
        )


if __name__ == "__main__":
    main()
