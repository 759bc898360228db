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
