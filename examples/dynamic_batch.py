"""Grow the batch during one `model.fit` on digits, the LR coupled to it.

Trains the digits MLP (scikit-learn's bundled data, nothing downloaded)
starting at batch 32; `DynamicBatchSize` measures the gradient noise scale
at every epoch end and moves the batch toward it, scaling the learning rate
linearly. The per-epoch batch size, learning rate and noise scale are in the
history (and in TensorBoard or a CSVLogger listed after the callback).

Runs on every Keras backend, TensorFlow not needed on JAX or PyTorch; the
batch grows physically (bigger batches from the input) on one device.

Usage:

```
KERAS_BACKEND=jax python examples/dynamic_batch.py [--policy POLICY]
```

(POLICY: noise_scale, plateau, schedule or goodput.)
"""

import argparse

import keras

import keras_batchtune
from keras_batchtune import demo

POLICY_ARGUMENTS = {
    "noise_scale": {},
    "goodput": {},
    "plateau": {"monitor": "val_loss", "patience": 1},
    # Smith et al.: grow the batch where the LR would decay; hold the LR.
    "schedule": {"schedule": {5: 128, 10: 512}, "keep_lr": True},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", default="noise_scale", choices=sorted(POLICY_ARGUMENTS)
    )
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    x, y, x_val, y_val = demo.load_digits_split()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.03, momentum=0.9),  # the LR for batch 32
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callback = keras_batchtune.DynamicBatchSize(
        args.policy,
        min_batch_size=32,
        max_batch_size=512,
        verbose=1,
        **POLICY_ARGUMENTS[args.policy],
    )
    train = keras_batchtune.resizable(x, y, batch_size=32, seed=0)
    history = model.fit(
        train,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[callback],
        verbose=2,
    )
    print("backend:", keras.config.backend())
    print("batch size per epoch:", history.history["batch_size"])
    print(
        "physical batch size per epoch:",
        history.history["physical_batch_size"],
    )
    print(
        "learning rate per epoch:",
        [round(v, 4) for v in history.history["learning_rate"]],
    )
    print(f"final val_accuracy: {history.history['val_accuracy'][-1]:.3f}")


if __name__ == "__main__":
    main()
