"""The optimizer -> rule table and the weight-decay coupling maths (pure)."""

import ast
import inspect
import math

import pytest

from keras_batchtune import optimizer_rules


@pytest.mark.parametrize(
    "names, rule",
    [
        (["SGD", "Optimizer"], "linear"),
        (["Adam", "Optimizer"], "sqrt"),
        (["AdamW", "Adam", "Optimizer"], "sqrt"),
        (["RMSprop"], "sqrt"),
        (["Adagrad"], "sqrt"),
        (["Lion"], "sqrt"),
        (["Lamb"], "sqrt"),
        (["Nadam"], "sqrt"),
        (["MyAdam", "Adam", "Optimizer"], "sqrt"),  # a subclass
        (["MySGD", "SGD", "Optimizer"], "linear"),
        (["Muon", "Optimizer"], None),
        (["MyOptimizer", "Optimizer", "BaseOptimizer"], None),
    ],
)
def test_table_picks_the_rule_by_class_name(names, rule):
    assert optimizer_rules.rule_for_optimizer(names) == rule


def test_auto_resolves_and_other_rules_are_kept():
    assert optimizer_rules.resolve("auto", ["Adam"]) == "sqrt"
    assert optimizer_rules.resolve("auto", ["SGD"]) == "linear"
    # A rule that does not fit the optimizer is used as given.
    assert optimizer_rules.resolve("linear", ["Adam"]) == "linear"
    rule = lambda r: r**0.8  # noqa: E731
    assert optimizer_rules.resolve(rule, ["Adam"]) is rule


def test_auto_refuses_an_unknown_optimizer_naming_lr_scaling():
    with pytest.raises(ValueError, match="`lr_scaling='auto'`.*MyOptimizer"):
        optimizer_rules.resolve("auto", ["MyOptimizer", "Optimizer"])


@pytest.mark.parametrize("value", ["auto", "linear", "sqrt", "none", abs])
def test_check_lr_scaling_accepts(value):
    assert optimizer_rules.check_lr_scaling(value) is value


@pytest.mark.parametrize("value", ["automatic", "Auto", None, 1.0])
def test_check_lr_scaling_refuses_naming_the_argument(value):
    with pytest.raises(ValueError, match="`lr_scaling`.*'auto', 'linear'"):
        optimizer_rules.check_lr_scaling(value)


@pytest.mark.parametrize(
    "rule, batch_size, expected",
    [
        ("sqrt", 128, 2.0),  # k = 4: lr x 2, weight decay x 2
        ("sqrt", 8, 0.5),
        ("linear", 512, 1.0),
        ("linear", 16, 1.0),
        ("none", 128, 4.0),
        (lambda r: r**0.75, 512, 16**0.25),
    ],
)
def test_weight_decay_multiplier_is_k_over_s_of_k(rule, batch_size, expected):
    assert optimizer_rules.weight_decay_multiplier(
        batch_size, 32, rule
    ) == pytest.approx(expected)


@pytest.mark.parametrize("rule", ["linear", "sqrt", "none"])
@pytest.mark.parametrize("batch_size", [8, 32, 96, 1024])
def test_scaled_weight_decay_keeps_the_adamw_timescale(rule, batch_size):
    base_lr, base_wd, n = 1e-3, 0.05, 60_000
    k = batch_size / 32
    lr = base_lr * {"linear": k, "sqrt": math.sqrt(k), "none": 1.0}[rule]
    wd = optimizer_rules.scale_weight_decay(base_wd, batch_size, 32, rule)
    assert optimizer_rules.adamw_timescale(
        batch_size, lr, wd, n
    ) == pytest.approx(optimizer_rules.adamw_timescale(32, base_lr, base_wd, n))


@pytest.mark.parametrize("weight_decay", [None, 0, 0.0, -0.1, math.nan, True])
def test_missing_weight_decay_names_couple_weight_decay(weight_decay):
    with pytest.raises(ValueError, match="`couple_weight_decay=True`"):
        optimizer_rules.scale_weight_decay(weight_decay, 64, 32, "sqrt")


def test_exponents_round_trip():
    for name in ("linear", "sqrt", "none"):
        exponent = optimizer_rules.rule_exponent(name)
        assert optimizer_rules.rule_from_exponent(exponent) == name
    assert optimizer_rules.rule_exponent(abs) is None
    assert optimizer_rules.rule_from_exponent(None) is None
    assert optimizer_rules.rule_from_exponent(0.75) is None


def test_mismatch_notice_groups_trials_and_cites():
    notice = optimizer_rules.mismatch_notice(
        [
            ("0", "linear", "sqrt"),
            ("2", "linear", "sqrt"),
            ("5", "sqrt", "linear"),
        ]
    )
    first, second = notice.splitlines()
    assert first.startswith("Note: trials 0, 2 scaled the learning rate with")
    assert "lr_scaling='linear'" in first and "usually want 'sqrt'" in first
    assert "Malladi et al. 2022" in first
    assert second.startswith("Note: trial 5 ")
    assert "usually want 'linear'" in second
    assert optimizer_rules.mismatch_notice([]) is None


def test_module_imports_no_framework():
    tree = ast.parse(inspect.getsource(optimizer_rules))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"keras", "tensorflow", "jax", "torch"}
