"""XGBoostTrainer on the shared cluster: the workers build one model together through XGBoost's
collective (each on a disjoint shard), and Ray's label_column form trains, checkpoints and
resumes."""

import os

import numpy as np
import pandas as pd
import pytest

import ember.data as rd
from ember import train

xgboost = pytest.importorskip("xgboost")

from ember.train.xgboost import RayTrainReportCallback, XGBoostTrainer, get_collective_args  # noqa: E402

PARAMS = {"objective": "binary:logistic", "max_depth": 3, "eval_metric": "logloss", "tree_method": "hist"}


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)})


def _loop(config):
    from xgboost import collective

    shard = train.get_dataset_shard("train").materialize().to_pandas()
    data = xgboost.DMatrix(shard[["a", "b", "c"]], label=shard["y"])
    booster = xgboost.train(
        PARAMS, data, num_boost_round=4, evals=[(data, "train")], callbacks=[RayTrainReportCallback(frequency=2)]
    )
    rank = train.get_context().get_world_rank()
    with open(os.path.join(config["dir"], f"model{rank}.json"), "w") as out:
        out.write("\n".join(booster.get_dump(dump_format="json")))
    with open(os.path.join(config["dir"], f"shard{rank}.txt"), "w") as out:
        args = get_collective_args()
        out.write(f"{len(shard)} {collective.get_world_size()} {collective.get_rank()} {args['dmlc_task_id']}")


def test_workers_build_one_model_through_xgboosts_collective(cluster, tmp_path, frame):
    result = XGBoostTrainer(
        _loop,
        train_loop_config={"dir": str(tmp_path)},
        scaling_config=train.ScalingConfig(num_workers=2),
        run_config=train.RunConfig(name="xgb", storage_path=str(tmp_path / "results")),
        datasets={"train": rd.from_pandas(frame)},
    ).fit()
    assert result.error is None, result.error
    assert [(tmp_path / f"shard{r}.txt").read_text() for r in range(2)] == ["600 2 0 0", "600 2 1 1"]
    models = [(tmp_path / f"model{r}.json").read_text() for r in range(2)]
    # Disjoint halves give one model only when the workers really trained together.
    assert models[0] == models[1]
    shard0 = frame.iloc[:600]
    alone = xgboost.train(PARAMS, xgboost.DMatrix(shard0[["a", "b", "c"]], label=shard0["y"]), num_boost_round=4)
    assert "\n".join(alone.get_dump(dump_format="json")) != models[0]
    # A report every round; checkpoints at rounds 2 and 4, so none is added at the end.
    assert len(result.metrics_history) == 4 and "train-logloss" in result.metrics
    kept = sorted(p for p in os.listdir(result.path) if p.startswith("checkpoint_"))
    assert kept == ["checkpoint_000001", "checkpoint_000003"]
    model = RayTrainReportCallback.get_model(result.checkpoint)
    assert model.num_boosted_rounds() == 4
    assert "\n".join(model.get_dump(dump_format="json")) == models[0]


def test_label_column_form_trains_evaluates_checkpoints_and_resumes(cluster, tmp_path, frame):
    def trainer(rounds, resume=None, name="xgb"):
        return XGBoostTrainer(
            label_column="y",
            params={"objective": "binary:logistic", "eval_metric": "error"},
            num_boost_round=rounds,
            datasets={"train": rd.from_pandas(frame.iloc[:1000]), "valid": rd.from_pandas(frame.iloc[1000:])},
            scaling_config=train.ScalingConfig(num_workers=2),
            run_config=train.RunConfig(name=name, storage_path=str(tmp_path)),
            resume_from_checkpoint=resume,
        )

    result = trainer(3).fit()
    assert result.error is None, result.error
    assert set(result.metrics) == {"train-error", "valid-error"}
    # Three rounds, then the checkpoint at the end in a report of its own.
    assert len(result.metrics_history) == 4
    model = XGBoostTrainer.get_model(result.checkpoint)
    assert model.num_boosted_rounds() == 3
    held_out = frame.iloc[1000:]
    accuracy = ((model.predict(xgboost.DMatrix(held_out[["a", "b", "c"]])) > 0.5) == held_out["y"]).mean()
    assert accuracy > 0.9
    resumed = trainer(5, resume=result.checkpoint, name="xgb-resumed").fit()
    assert resumed.error is None, resumed.error
    assert XGBoostTrainer.get_model(resumed.checkpoint).num_boosted_rounds() == 5
    assert len(resumed.metrics_history) == 3  # the two missing rounds and the final checkpoint


def test_bad_input_fails_at_once():
    with pytest.raises(ValueError, match="label_column"):
        XGBoostTrainer(params={})
    with pytest.raises(ValueError, match="num_boost_round"):
        XGBoostTrainer(label_column="y", datasets={"train": rd.range(4)}, num_boost_round=0)
    with pytest.raises(ValueError, match="frequency"):
        RayTrainReportCallback(frequency=-1)
    with pytest.raises(RuntimeError, match="no train session"):
        get_collective_args()
