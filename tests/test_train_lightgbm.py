"""LightGBMTrainer on the shared cluster: the workers build one model together through LightGBM's
own network (each on a disjoint shard), and Ray's label_column form trains and checkpoints it."""

import os

import numpy as np
import pandas as pd
import pytest

import ember.data as rd
from ember import train
from ember.train.lightgbm import LightGBMTrainer, RayTrainReportCallback, get_network_params

lightgbm = pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)})


def _loop(config):
    shard = train.get_dataset_shard("train").materialize().to_pandas()
    network = get_network_params()
    data = lightgbm.Dataset(shard[["a", "b", "c"]], label=shard["y"])
    params = {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5, **network}
    booster = lightgbm.train(params, data, num_boost_round=4, callbacks=[RayTrainReportCallback(frequency=2)])
    rank = train.get_context().get_world_rank()
    with open(os.path.join(config["dir"], f"model{rank}.txt"), "w") as out:
        out.write(booster.model_to_string())
    with open(os.path.join(config["dir"], f"shard{rank}.txt"), "w") as out:
        out.write(f"{len(shard)} {network['num_machines']} {network['machines'].count(',') + 1}")


def test_workers_build_one_model_through_lightgbms_network(cluster, tmp_path, frame):
    result = LightGBMTrainer(
        _loop,
        train_loop_config={"dir": str(tmp_path)},
        scaling_config=train.ScalingConfig(num_workers=2),
        run_config=train.RunConfig(name="gbm", storage_path=str(tmp_path / "results")),
        datasets={"train": rd.from_pandas(frame)},
    ).fit()
    assert result.error is None, result.error
    assert [(tmp_path / f"shard{r}.txt").read_text() for r in range(2)] == ["600 2 2"] * 2
    models = [(tmp_path / f"model{r}.txt").read_text() for r in range(2)]
    # Disjoint halves give one model only when the workers really trained together.
    strip = [m.split("parameters:")[0] for m in models]
    assert strip[0] == strip[1]
    alone = lightgbm.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5},
        lightgbm.Dataset(frame[["a", "b", "c"]].iloc[:600], label=frame["y"].iloc[:600]),
        num_boost_round=4,
    )
    assert alone.model_to_string().split("parameters:")[0] != strip[0]
    assert len(result.metrics_history) == 4
    kept = sorted(p for p in os.listdir(result.path) if p.startswith("checkpoint_"))
    assert kept == ["checkpoint_000001", "checkpoint_000003"]
    assert RayTrainReportCallback.get_model(result.checkpoint).num_trees() == 4


def test_label_column_form_trains_evaluates_and_checkpoints(cluster, tmp_path, frame):
    result = LightGBMTrainer(
        label_column="y",
        params={"objective": "binary", "metric": "binary_error"},
        num_boost_round=6,
        datasets={"train": rd.from_pandas(frame.iloc[:1000]), "valid": rd.from_pandas(frame.iloc[1000:])},
        scaling_config=train.ScalingConfig(num_workers=2),
        run_config=train.RunConfig(name="gbm", storage_path=str(tmp_path)),
    ).fit()
    assert result.error is None, result.error
    assert set(result.metrics) == {"train-binary_error", "valid-binary_error"}
    model = LightGBMTrainer.get_model(result.checkpoint)
    held_out = frame.iloc[1000:]
    accuracy = ((model.predict(held_out[["a", "b", "c"]]) > 0.5) == held_out["y"]).mean()
    assert accuracy > 0.9
    with pytest.raises(ValueError, match="label_column"):
        LightGBMTrainer(params={})
    with pytest.raises(RuntimeError, match="no train session"):
        get_network_params()
