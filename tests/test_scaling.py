import math

import pytest

from keras_batchtune import scale_learning_rate
from keras_batchtune import scaling


@pytest.mark.parametrize(
    "rule, batch_size, expected",
    [
        ("linear", 256, 0.8),
        ("linear", 16, 0.05),
        ("sqrt", 128, 0.2),
        ("sqrt", 8, 0.05),
        ("none", 1024, 0.1),
        (lambda ratio: ratio**0.5, 128, 0.2),
    ],
)
def test_rules(rule, batch_size, expected):
    assert scale_learning_rate(0.1, batch_size, 32, rule) == pytest.approx(
        expected
    )


def test_default_rule_is_linear():
    assert scale_learning_rate(0.1, 64, 32) == pytest.approx(0.2)


def test_reference_batch_keeps_learning_rate():
    for rule in scaling.LR_SCALING_RULES:
        assert scale_learning_rate(3e-4, 32, 32, rule) == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 12.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"base_batch_size": -32}, "base_batch_size"),
        ({"rule": "cubic"}, "lr_scaling"),
        ({"rule": lambda ratio: 0.0}, "lr_scaling"),
        ({"rule": lambda ratio: -ratio}, "lr_scaling"),
        ({"rule": lambda ratio: math.inf}, "lr_scaling"),
        ({"rule": lambda ratio: "big"}, "lr_scaling"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    arguments = {"lr": 0.1, "batch_size": 64, "base_batch_size": 32}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        scale_learning_rate(**arguments)


def test_unknown_rule_lists_the_allowed_values():
    with pytest.raises(ValueError, match="'linear', 'sqrt', 'none'"):
        scaling.get_rule("cubic")


def test_warmup_ramps_linearly_from_base_to_scaled():
    assert scaling.warmup_multiplier(0, 100, 8.0) == 1.0
    assert scaling.warmup_multiplier(50, 100, 8.0) == pytest.approx(4.5)
    assert scaling.warmup_multiplier(100, 100, 8.0) == 8.0
    assert scaling.warmup_multiplier(500, 100, 8.0) == 8.0
    assert scaling.warmup_multiplier(0, 0, 8.0) == 8.0
    # A smaller batch warms "down" to its smaller learning rate.
    assert scaling.warmup_multiplier(50, 100, 0.5) == pytest.approx(0.75)


def test_scaling_module_is_free_of_tensorflow():
    import ast
    import inspect

    for module in (scaling, __import__("keras_batchtune.space").space):
        tree = ast.parse(inspect.getsource(module))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in getattr(node, "names", [])
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"tensorflow", "keras", "jax", "torch"}
