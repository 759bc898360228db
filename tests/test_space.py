import pytest

from keras_batchtune import space


def test_log_grid_doubles():
    assert space.batch_size_grid(16, 1024) == [16, 32, 64, 128, 256, 512, 1024]
    assert space.batch_size_grid(10, 100) == [10, 20, 40, 80]
    assert space.batch_size_grid(8, 8) == [8]


def test_linear_grid_adds():
    assert space.batch_size_grid(8, 40, 8, "linear") == [8, 16, 24, 32, 40]


@pytest.mark.parametrize(
    "low, high, name",
    [
        (0, 64, "min_batch_size"),
        (16, -1, "max_batch_size"),
        (16.0, 64, "min_batch_size"),
        (64, 16, "min_batch_size"),
    ],
)
def test_bad_range_names_the_argument(low, high, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        space.batch_size_grid(low, high)


def test_values_from_hyperparameter_configs():
    log_int = {"min_value": 16, "max_value": 64, "step": 2, "sampling": "log"}
    assert space.hyperparameter_values(log_int) == [16, 32, 64]
    assert space.hyperparameter_values({"values": [64, 8]}) == [8, 64]
    assert space.hyperparameter_values({"value": 48}) == [48]
    plain_int = {"min_value": 4, "max_value": 6, "step": None}
    assert space.hyperparameter_values(plain_int) == [4, 5, 6]


def test_below_ceiling():
    assert space.below_ceiling([16, 32, 64, 128], 64) == [16, 32]
    assert space.below_ceiling([16, 32], None) == [16, 32]
    assert space.below_ceiling([16, 32], 16) == []


def test_lowered_ceiling_only_moves_down():
    assert space.lowered_ceiling(None, 512) == 512
    assert space.lowered_ceiling(256, 512) == 256
    assert space.lowered_ceiling(256, 128) == 128


def test_batch_unit_follows_replicas_and_tpu_cores():
    assert space.batch_size_unit() == 1
    assert space.batch_size_unit(2) == 2
    assert space.batch_size_unit(2, per_replica=True) == 1
    assert space.batch_size_unit(8, per_replica_multiple=8) == 64
    assert space.batch_size_unit(8, True, space.TPU_PER_CORE_MULTIPLE) == 8


def test_aligned_range_rounds_inwards():
    assert space.aligned_batch_range(16, 1024) == (16, 1024)
    assert space.aligned_batch_range(3, 101, num_replicas=2) == (4, 100)
    assert space.aligned_batch_range(
        16, 1000, num_replicas=8, per_replica_multiple=8
    ) == (64, 960)
    assert space.aligned_batch_range(
        4, 100, num_replicas=8, per_replica=True, per_replica_multiple=8
    ) == (8, 96)
    grid = space.batch_size_grid(*space.aligned_batch_range(6, 500, 4))
    assert grid == [8, 16, 32, 64, 128, 256]


def test_aligned_range_refuses_less_than_one_example_per_replica():
    # A minimum below the replica count is aligned up (issue 15); a maximum
    # below it leaves less than one example per replica.
    assert space.aligned_batch_range(1, 64, num_replicas=2) == (2, 64)
    assert space.aligned_batch_range(4, 512, num_replicas=8) == (8, 512)
    with pytest.raises(ValueError, match="less than one example per replica"):
        space.aligned_batch_range(1, 4, num_replicas=8)
    # Per replica, 1 is one example per replica.
    assert space.aligned_batch_range(1, 64, 2, per_replica=True) == (1, 64)
    with pytest.raises(ValueError, match="`max_batch_size` must be >= 64"):
        space.aligned_batch_range(16, 32, 8, per_replica_multiple=8)


def test_global_batch_size_and_its_check():
    assert space.global_batch_size(32, 8, per_replica=True) == 256
    assert space.global_batch_size(32, 8) == 32
    assert space.check_global_batch_size(64, 8) == 64
    with pytest.raises(ValueError, match="use 8 or 10"):
        space.check_global_batch_size(9, 2)
    with pytest.raises(ValueError, match="less than one example"):
        space.check_global_batch_size(1, 2)


def test_split_keeps_micro_batches_multiples_of_the_replicas():
    assert space.split_batch(12, 5, multiple=2) == (4, 3)
    assert space.split_batch(64, 20, multiple=8) == (16, 4)
    assert space.split_batch(8, 1, multiple=2) == (2, 4)  # never below 2
    with pytest.raises(ValueError, match="`multiple` must divide"):
        space.split_batch(9, 4, multiple=2)
