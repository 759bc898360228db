"""What `BatchTuner` checks and runs before its first trial.

Its batch-size arguments are checked before anything is written to the
project directory; `search()` may first probe the memory
(`probe_memory=True`) and run the learning-rate range test
(`lr_band="range_test"` or `"both"`). Backend-neutral: the probes run
through `keras_batchtune.memory` and `keras_batchtune.lr_finder`.
"""

import numbers

import keras
import keras_tuner

from keras_batchtune import callbacks as callbacks_module
from keras_batchtune import coupling
from keras_batchtune import distribute
from keras_batchtune import lr_finder
from keras_batchtune import memory
from keras_batchtune import optimizer_rules
from keras_batchtune import oracle as oracle_module
from keras_batchtune import scaling
from keras_batchtune import space
from keras_batchtune import trial_fit
from keras_batchtune.backend import keras_tuner_internals


def check_batch_arguments(
    *,
    min_batch_size,
    max_batch_size,
    base_batch_size,
    lr_scaling,
    warmup_epochs,
    lr_hyperparameter,
    strategy,
    per_replica,
):
    """Checks `BatchTuner`'s batch-size and coupling arguments.

    Example:

    ```python
    check_batch_arguments(
        min_batch_size=16, max_batch_size=512, base_batch_size=None,
        lr_scaling="linear", warmup_epochs=0, lr_hyperparameter=None,
        strategy=None, per_replica=False,
    )  # (16, 512)
    ```

    Args:
        min_batch_size: The smallest searched batch size.
        max_batch_size: The largest searched batch size.
        base_batch_size: None or the reference batch size.
        lr_scaling: The coupling rule (or `"auto"`); checked on every batch
            of the grid.
        warmup_epochs: A number >= 0.
        lr_hyperparameter: None or a non-empty string.
        strategy: The tuner's `distribution_strategy`, or None.
        per_replica: Whether the searched batch is per replica.

    Returns:
        `(min_batch_size, max_batch_size)`, aligned to the replica count.

    Raises:
        ValueError: naming the argument and what is allowed.
    """
    if lr_hyperparameter is not None and not (
        isinstance(lr_hyperparameter, str) and lr_hyperparameter
    ):
        raise ValueError(
            "`lr_hyperparameter` must be None or the name (a non-empty "
            "string) of the learning-rate hyperparameter. "
            f"Received: lr_hyperparameter={lr_hyperparameter!r}"
        )
    min_batch_size, max_batch_size = distribute.aligned_batch_range(
        min_batch_size, max_batch_size, strategy, per_replica
    )
    # The LR rule is checked on global batches.
    scale = distribute.num_replicas(strategy) if per_replica else 1
    grid = space.batch_size_grid(min_batch_size, max_batch_size)
    if base_batch_size is not None:
        scaling.check_positive_int("base_batch_size", base_batch_size)
    reference = base_batch_size or trial_fit.KERAS_DEFAULT_BATCH_SIZE
    optimizer_rules.check_lr_scaling(lr_scaling)
    # "auto" picks "linear" or "sqrt", both fine at every batch.
    rules = (
        ("linear", "sqrt")
        if lr_scaling == optimizer_rules.AUTO
        else (lr_scaling,)
    )
    for rule in rules:
        for batch_size in grid + [min_batch_size, max_batch_size]:
            scaling.learning_rate_multiplier(
                batch_size * scale, reference, rule
            )
    if (
        isinstance(warmup_epochs, bool)
        or not isinstance(warmup_epochs, numbers.Real)
        or not warmup_epochs >= 0
    ):
        raise ValueError(
            "`warmup_epochs` must be a number >= 0. "
            f"Received: warmup_epochs={warmup_epochs!r}"
        )
    return min_batch_size, max_batch_size


def check_optimizer_coupling(
    *,
    hypermodel,
    hyperparameters,
    lr_scaling,
    couple_weight_decay,
    optimizer=None,
):
    """Checks `lr_scaling="auto"` and `couple_weight_decay` on the optimizer.

    Both need the optimizer the trials compile, known before anything is
    written only by building the model: with either one asked for, the
    hypermodel is built once with its default hyperparameters (the
    `optimizer` argument of `keras_tuner.Tuner`, if given, is taken
    instead). A hypermodel that compiles its model elsewhere (in
    `HyperModel.fit`), or picks its optimizer from a hyperparameter, is
    checked again at each trial, where bad input stops the search.

    Example:

    ```python
    check_optimizer_coupling(
        hypermodel=build_model, hyperparameters=None, lr_scaling="auto",
        couple_weight_decay=False,
    )  # "sqrt" for a model compiled with Adam
    ```

    Args:
        hypermodel: The tuner's hypermodel (a `keras_tuner.HyperModel`, a
            function `hp -> model`, or None).
        hyperparameters: The tuner's `hyperparameters`, or None.
        lr_scaling: The tuner's `lr_scaling`.
        couple_weight_decay: The tuner's `couple_weight_decay`.
        optimizer: The `optimizer` argument of `keras_tuner.Tuner`, or None.

    Returns:
        The rule `"auto"` picks for the default model's optimizer; None if
        `lr_scaling` is not `"auto"`, or no optimizer was found.

    Raises:
        ValueError: naming `couple_weight_decay` if it is not a boolean or
            the optimizer has no decoupled weight decay; naming `lr_scaling`
            if it is `"auto"` and the optimizer is not in the table of
            `keras_batchtune.optimizer_rules`.
    """
    if not isinstance(couple_weight_decay, bool):
        raise ValueError(
            "`couple_weight_decay` must be a boolean. "
            f"Received: couple_weight_decay={couple_weight_decay!r}"
        )
    auto = lr_scaling == optimizer_rules.AUTO
    if not (auto or couple_weight_decay):
        return None
    if optimizer is None and hypermodel is not None:
        hp = keras_tuner.HyperParameters()
        if hyperparameters is not None:
            hp = hyperparameters.copy()
        if isinstance(hypermodel, keras_tuner.HyperModel):
            model = hypermodel.build(hp)
        else:
            model = hypermodel(hp)
        optimizer = getattr(model, "optimizer", None)
        del model
    elif optimizer is not None:
        optimizer = keras.optimizers.get(optimizer)
    inner = coupling.inner_optimizer(optimizer)
    if not isinstance(inner, keras.optimizers.Optimizer):
        return None
    if couple_weight_decay:
        coupling.get_weight_decay(inner)
    if auto:
        return coupling.resolve_lr_scaling(inner, lr_scaling)[0]
    return None


def check_dynamic(dynamic, max_batch_size):
    """Checks `BatchTuner`'s `dynamic` argument.

    Example:

    ```python
    check_dynamic(None, 1024)  # None
    ```

    Args:
        dynamic: None or a `keras_batchtune.DynamicBatchSize`.
        max_batch_size: The tuner's largest searched batch size.

    Returns:
        `dynamic`.

    Raises:
        ValueError: if `dynamic` is something else, or its `max_batch_size`
            is below the tuner's.
    """
    if dynamic is None:
        return None
    if not isinstance(dynamic, callbacks_module.DynamicBatchSize):
        raise ValueError(
            "`dynamic` must be a `keras_batchtune.DynamicBatchSize` or None. "
            f"Received: dynamic={dynamic!r}"
        )
    if dynamic.max_batch_size < max_batch_size:
        raise ValueError(
            "`dynamic`: its `max_batch_size` "
            f"({dynamic.max_batch_size}) must be >= the tuner's "
            f"`max_batch_size` ({max_batch_size}), the largest starting batch."
        )
    return dynamic


def _data(fit_args, fit_kwargs):
    x = fit_args[0] if fit_args else fit_kwargs.get("x")
    y = fit_args[1] if len(fit_args) > 1 else fit_kwargs.get("y")
    return x, y


def prepare_lr_band(tuner, fit_args, fit_kwargs):
    """Gives the oracle the coupling; runs the range test if asked.

    With `lr_band="range_test"` or `"both"` and no saved suggestion yet,
    `keras_batchtune.find_learning_rate` runs at the reference batch on the
    search data, on a model built with the default hyperparameters, and its
    suggestion is saved with the oracle (a resumed search does not run it
    again).

    Example:

    ```python
    prepare_lr_band(tuner, (x, y), {"epochs": 5})
    ```

    Args:
        tuner: A `BatchTuner`.
        fit_args: The positional arguments of `search()`.
        fit_kwargs: Its keyword arguments (`verbose` is read).
    """
    oracle = tuner.oracle
    if not isinstance(oracle, oracle_module.BatchSearchOracle):
        return  # a worker of a distributed search: the chief samples
    if oracle.lr_band == "off":
        return
    oracle.learning_rate_multiplier = tuner.learning_rate_multiplier
    verbose = fit_kwargs.get("verbose", 1)
    lr_hp = oracle.learning_rate_hyperparameter()
    if lr_hp is None:
        if verbose:
            print(
                f"BatchTuner: lr_band={oracle.lr_band!r} has no effect: "
                "no learning-rate hyperparameter (a positive `hp.Float` "
                "named 'learning_rate' or 'lr', or pass "
                "`lr_hyperparameter=`) in the search space."
            )
        return
    wants_test = oracle.lr_band in ("range_test", "both")
    if not wants_test or oracle.range_test_learning_rate is not None:
        return
    x, y = _data(fit_args, fit_kwargs)
    model = keras_tuner_internals.try_build(tuner, oracle.get_space())
    reference = tuner.reference_batch_size or (
        trial_fit.KERAS_DEFAULT_BATCH_SIZE
    )
    result = lr_finder.find_learning_rate(model, x, y, batch_size=reference)
    oracle.range_test_learning_rate = result.suggestion
    oracle.save()
    if verbose:
        low, high = oracle.learning_rate_interval(reference)
        print(
            f"BatchTuner: range test at batch {reference} suggests "
            f"{lr_hp.name}={result.suggestion:.3g}; 3 trials in 4 sample "
            f"it in [{low:.3g}, {high:.3g}] (times the coupling's "
            "multiplier relative to the reference batch)."
        )


def probe_memory(tuner, fit_args, fit_kwargs):
    """Finds the largest batch that fits; the oracle's ceiling learns it.

    Runs `keras_batchtune.find_max_batch_size` (binary search between the
    tuner's batch bounds) on a model built with the default
    hyperparameters.

    Example:

    ```python
    ceiling = probe_memory(tuner, (x, y), {})
    ```

    Args:
        tuner: A `BatchTuner`.
        fit_args: The positional arguments of `search()`.
        fit_kwargs: Its keyword arguments (`verbose` is read).

    Returns:
        The smallest searched batch size known not to fit (one more than
        the largest that fits), in the units of the searched batch size.
    """
    x, y = _data(fit_args, fit_kwargs)
    model = keras_tuner_internals.try_build(tuner, tuner.oracle.get_space())
    # The finder works in global batches; the ceiling in searched ones.
    scale = 1
    if tuner.per_replica:
        scale = distribute.num_replicas(distribute.model_strategy(model))
    result = memory.find_max_batch_size(
        model,
        x if y is None else (x, y),
        mode="binsearch",
        start=tuner.min_batch_size * scale,
        max_batch_size=tuner.max_batch_size * scale,
    )
    ceiling = result.batch_size // scale + 1
    if hasattr(tuner.oracle, "lower_ceiling"):
        tuner.oracle.lower_ceiling(ceiling)
        tuner.oracle.save()
    if fit_kwargs.get("verbose", 1):
        seconds = sum(probe.seconds for probe in result.probes)
        print(
            "BatchTuner: probe_memory found that batches of up to "
            f"{result.batch_size} fit ({len(result.probes)} probes, "
            f"{seconds:.1f} s)."
        )
    return ceiling
