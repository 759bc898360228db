import keras_tuner

from keras_batchtune import oracle as oracle_module
from keras_batchtune import report


def test_table_and_best_line(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [32, 512])
    hp.Fixed("learning_rate", 0.05)
    oracle = oracle_module.BatchSearchOracle(
        objective="val_accuracy", max_trials=3, hyperparameters=hp, seed=1
    )
    oracle._set_project_dir(str(tmp_path), "report")
    records = [
        {
            "val_accuracy": 0.9,
            "effective_learning_rate": 0.05,
            "examples_per_second": 1000.0,
        },
        {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 512},
    ]
    for metrics in records:
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(trial.trial_id, metrics)
        trial.status = "COMPLETED" if "val_accuracy" in metrics else "FAILED"
        oracle.end_trial(trial)
    table = report.trials_table(oracle).splitlines()
    assert "effective LR" in table[0] and "examples/s" in table[0]
    assert len(table) == 4
    assert "COMPLETED" in table[2] and "1000" in table[2]
    assert "out of memory at batch 512" in table[3]
    assert report.best_line(oracle).startswith("Best: trial 0, batch_size=32")
