"""`BatchTuner` under a distribution: which one, checked, kept active.

On TensorFlow a search distributes through KerasTuner's
`distribution_strategy` (a `tf.distribute.Strategy`), as before. On JAX the
engine is `keras.distribution`: the search's `Distribution` is the tuner's
`distribution` argument, or a `Distribution` passed as
`distribution_strategy`, or else the global one
(`keras.distribution.set_distribution`) when the tuner is made. Keras's JAX
`fit` reads the global distribution, and KerasTuner clears the Keras session
(the global distribution with it) before every build, so the search's
distribution is made global for the whole search and put back after every
build; what was global before the search is put back when it ends.

Every check runs before `keras_tuner.Tuner.__init__` writes the project
directory. Backend-neutral: what differs is in
`keras_batchtune.backend.distribute`.
"""

import contextlib

import keras
from keras_tuner import errors

from keras_batchtune import distribute


def resolve(distribution, tuner_kwargs):
    """Checks the tuner's distribution arguments; picks the search's.

    Example:

    ```python
    distribution, strategy = resolve(None, {"distribution_strategy": None})
    ```

    Args:
        distribution: `BatchTuner`'s `distribution` argument, or None.
        tuner_kwargs: The keyword arguments for `keras_tuner.Tuner` (its
            `distribution_strategy` is replaced by what KerasTuner can take:
            a `tf.distribute.Strategy` or None).

    Returns:
        A pair `(distribution, strategy)`: the search's
        `keras.distribution.Distribution` (JAX) or None, and the strategy
        whose replicas the batch grid is aligned to (that distribution, or
        the `tf.distribute.Strategy`, or None).

    Raises:
        ValueError: naming the argument, for both arguments at once, an
            object of the other backend, or a device mesh that does not
            cover the devices there are.
    """
    chosen, keras_tuner_strategy = distribute.check_tuner_distribution(
        distribution, tuner_kwargs.get("distribution_strategy")
    )
    if "distribution_strategy" in tuner_kwargs or chosen is not None:
        tuner_kwargs["distribution_strategy"] = keras_tuner_strategy
    return chosen, chosen if chosen is not None else keras_tuner_strategy


def attach(tuner, distribution):
    """Gives KerasTuner the search's distribution once it is constructed.

    KerasTuner enters `tuner.distribution_strategy.scope()` around each
    build, compile override and weight load; a
    `keras.distribution.Distribution` has such a scope, which makes it the
    global one, so the model's variables get its layouts.

    Args:
        tuner: A `BatchTuner` after `keras_tuner.Tuner.__init__`.
        distribution: The search's distribution, or None.
    """
    tuner.distribution = distribution
    if distribution is not None:
        tuner.distribution_strategy = distribution


@contextlib.contextmanager
def active(tuner):
    """Makes the tuner's distribution the global one during a search.

    Example:

    ```python
    with active(tuner):
        keras_tuner.Tuner.search(tuner, x, y)
    ```

    Args:
        tuner: A `BatchTuner`.

    Raises:
        ValueError: if a global distribution was set after the tuner was
            made without one (its batch grid was aligned to one device).
    """
    if tuner.distribution is None:
        current, _ = distribute.check_tuner_distribution(None, None)
        if current is not None:
            raise ValueError(
                "A global distribution (`keras.distribution."
                f"set_distribution({current!r})`) was set after this "
                "BatchTuner was made without one, so its batch sizes were "
                "chosen for one device. Set it before making the tuner, or "
                "pass it as `distribution=`."
            )
    previous = keras.distribution.distribution()
    if tuner.distribution is not None:
        keras.distribution.set_distribution(tuner.distribution)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


@contextlib.contextmanager
def kept():
    """Puts the global distribution back after what clears the session.

    KerasTuner's `_try_build` calls `keras.backend.clear_session()`, which
    resets Keras's global state, the global distribution included.
    """
    before = keras.distribution.distribution()
    try:
        yield
    finally:
        keras.distribution.set_distribution(before)


def install_even_split(model):
    """Makes `model.fit` cut array data into batches the devices share.

    Under a `keras.distribution` over several devices, the last examples
    that would make a smaller last batch uneven are left out (see
    `keras_batchtune.backend.distribute.even_split`); elsewhere nothing
    changes.

    Args:
        model: A `keras.Model` built for a trial.
    """
    original_fit = model.fit

    def fit(*args, **kwargs):
        strategy = distribute.model_strategy(model)
        try:
            args, kwargs = distribute.even_split(args, kwargs, strategy)
        except ValueError as error:
            # Every trial would fail alike: the search stops here.
            raise errors.FatalValueError(str(error)) from error
        return original_fit(*args, **kwargs)

    model.fit = fit
