"""BatchTuner under `keras.distribution.DataParallel`: 8 virtual CPU devices.

The scenarios run in one process of their own
(`data_parallel_scenarios.py`: XLA_FLAGS must be set before JAX starts) and
report JSON lines; each test reads its scenario. The timeout only stops a
hang.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from keras_batchtune import space

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DEVICES = 8
NUM_TRAIN = 500 - 500 % DEVICES  # the scenarios' 500 examples, split evenly


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("XLA_FLAGS", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(HERE / "data_parallel_scenarios.py")],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            assert "failed" not in result, result["failed"]
            found[result["scenario"]] = result
    found["seconds"] = time.perf_counter() - start
    print(f"data-parallel scenarios: {found['seconds']:.1f} s")
    return found


def _shapes_fed(batch_size, num_examples=NUM_TRAIN):
    """The batch shapes of one epoch: the batch, and a smaller last one."""
    return {batch_size, num_examples % batch_size} - {0}


def _check_trials_shard_evenly(result, lr_ratio):
    for trial in result["trials"]:
        if trial["status"] != "COMPLETED":
            continue
        global_batch = int(trial["metrics"]["global_batch_size"])
        assert global_batch % DEVICES == 0
        assert trial["metrics"]["num_replicas"] == DEVICES
        # The learning rate is coupled to the global batch (linear, ref 32).
        expected = trial["values"]["learning_rate"] * global_batch / 32
        assert trial["metrics"]["effective_learning_rate"] == pytest.approx(
            expected * lr_ratio, rel=1e-5
        )
    for _, shape, shard in result["shards"]:
        # Each device holds B/8 of every batch, training and validation.
        assert shape[0] % DEVICES == 0
        assert shard == [shape[0] // DEVICES, shape[1]]


def test_global_data_parallel_is_respected_without_arguments(results):
    result = results["global"]
    assert result["num_devices"] == DEVICES
    # min_batch_size=4 is aligned up to 8, with a warning saying why.
    assert (result["grid"]["min_value"], result["grid"]["max_value"]) == (
        8,
        64,
    )
    assert any(
        "[4, 64] is searched as [8, 64]" in w
        for w in result["construction_warnings"]
    )
    sizes = [t["values"]["batch_size"] for t in result["trials"]]
    assert all(size % DEVICES == 0 for size in sizes)
    assert len(set(sizes)) > 1
    _check_trials_shard_evenly(result, lr_ratio=1.0)
    trained = {tuple(s[1]) for s in result["shards"] if s[0]}
    assert {(size, 16) for size in sizes} <= trained
    # The user's global distribution is still set after the search.
    assert result["global_kept"]


def test_compilations_equal_the_distinct_batch_shapes_fed(results):
    for result in (results["global"], results["explicit"]):
        # Each trial builds a new model: its train step compiles once per
        # batch shape it is fed (the batch, and a smaller last batch unless
        # the batch divides the epoch).
        expected = sum(
            len(_shapes_fed(int(t["metrics"]["global_batch_size"])))
            for t in result["trials"]
        )
        assert result["train_step"] == expected
        traced = [s for s in result["shards"] if s[0]]
        assert len(traced) == expected


def test_explicit_distribution_and_per_replica(results):
    result = results["explicit"]
    # Per-replica bounds: the global batch is 8 times the searched one.
    assert (result["grid"]["min_value"], result["grid"]["max_value"]) == (
        1,
        8,
    )
    for trial in result["trials"]:
        assert trial["metrics"]["global_batch_size"] == (
            trial["values"]["batch_size"] * DEVICES
        )
    _check_trials_shard_evenly(result, lr_ratio=1.0)
    # An explicit distribution is not left global after the search.
    assert result["global_after"] == "None"
    # A Distribution passed as KerasTuner's `distribution_strategy`.
    assert result["as_strategy_replicas"] == DEVICES
    assert result["as_strategy_grid"]["min_value"] == 8


def test_out_of_memory_ceiling_under_the_distribution(results):
    result = results["memory"]["ceiling"]
    failed = [t for t in result["trials"] if t["status"] == "FAILED"]
    assert failed
    for trial in failed:
        assert trial["metrics"]["out_of_memory_at_batch_size"] > 32
    assert result["oracle_ceiling"] <= 64
    completed = [t for t in result["trials"] if t["status"] == "COMPLETED"]
    assert completed
    for trial in completed:
        assert trial["values"]["batch_size"] <= 32
    _check_trials_shard_evenly(result, lr_ratio=1.0)


def test_accumulate_and_probe_memory_under_the_distribution(results):
    result = results["memory"]["accumulate"]
    # The finder probed multiples of 8 and found 32 (the ceiling is 33).
    assert result["memory_ceiling"] == 33
    for trial in result["trials"]:
        assert trial["status"] == "COMPLETED"
        metrics = trial["metrics"]
        batch = trial["values"]["batch_size"]
        assert metrics["micro_batch_size"] == 32
        assert metrics["micro_batch_size"] % DEVICES == 0
        assert metrics["accumulation_steps"] == batch // 32
        # Coupled to the global batch, not the micro-batch.
        assert metrics["effective_learning_rate"] == pytest.approx(
            trial["values"]["learning_rate"] * batch / 32, rel=1e-5
        )
    for _, shape, shard in result["shards"]:
        assert shape[0] <= 32
        assert shard[0] * DEVICES == shape[0]


def test_successive_halving_under_the_distribution(results):
    result = results["memory"]["halving"]
    assert all(t["status"] == "COMPLETED" for t in result["trials"])
    promoted = [t for t in result["trials"] if t["values"]["tuner/rung"] > 0]
    assert promoted
    assert all("tuner/trial_id" in t["values"] for t in promoted)
    _check_trials_shard_evenly(result, lr_ratio=1.0)


@pytest.mark.parametrize(
    "case, names",
    [
        ("both", ["`distribution`", "`distribution_strategy`"]),
        ("not_a_distribution", ["`distribution`", "JAX", "tf.distribute"]),
        ("strategy_not_a_distribution", ["`distribution_strategy`", "JAX"]),
        ("missing_devices", ["`distribution`", "cpu:8", "not found"]),
        ("repeated_devices", ["`distribution`", "more than once"]),
        ("less_than_one_per_device", ["`max_batch_size`", "less than one"]),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(results, case, names):
    error = results["errors"][case]
    assert error["type"] == "ValueError"
    for name in names:
        assert name in error["message"]
    assert not error["written"]


def test_uneven_batches_are_rounded_or_refused(results):
    errors = results["errors"]
    # A max_batch_size that does not divide across 8 devices: rounded down.
    assert errors["rounded"]["grid"]["max_value"] == 96
    assert any(
        "[8, 100] is searched as [8, 96]" in w
        for w in errors["rounded"]["warnings"]
    )
    # A batch of the hypermodel's own that does not divide stops the search.
    assert "multiple of the 8 replicas" in errors["uneven"]["message"]
    assert "batch_size=12" in errors["uneven"]["message"]
    # A global distribution set after the tuner was made without one.
    assert "pass it as `distribution=`" in errors["late"]["message"]


def test_resolve_distribution_tpu_argument_on_jax(results):
    errors = results["errors"]
    assert "`tpu`" in errors["tpu_address"]["message"]
    assert "KERAS_BACKEND=tensorflow" in errors["tpu_address"]["message"]
    assert "finds no TPU" in errors["tpu_local"]["message"]
    if errors["tf_strategy"] is not None:  # TensorFlow installed
        assert "`distribution_strategy`" in errors["tf_strategy"]["message"]
        assert not errors["tf_strategy"]["written"]


def test_resolve_distribution_is_data_parallel_over_all_devices(caplog):
    import keras

    import keras_batchtune

    with caplog.at_level("INFO", logger="keras_batchtune"):
        distribution = keras_batchtune.resolve_distribution(verbose=False)
    assert isinstance(distribution, keras.distribution.DataParallel)
    assert list(distribution.device_mesh.devices) == (
        keras.distribution.list_devices()
    )
    assert "DataParallel" in caplog.text
    strategy = keras_batchtune.resolve_strategy(verbose=False)
    assert isinstance(strategy, keras.distribution.DataParallel)


@pytest.mark.parametrize(
    "kind, multiple",
    [
        ("tpu", 8),
        ("TPU v5 lite", 8),
        ("tpu:3", 8),
        ("gpu", 1),
        ("NVIDIA H200", 1),
        ("cpu:0", 1),
    ],
)
def test_per_device_multiple(kind, multiple):
    assert space.per_device_multiple(kind) == multiple
    # 8 TPU cores: a global batch is a multiple of 64.
    unit = space.batch_size_unit(8, per_replica_multiple=multiple)
    assert unit == 8 * multiple


def test_per_device_multiple_refuses_what_is_not_a_kind():
    with pytest.raises(ValueError, match="device_kind"):
        space.per_device_multiple("")
