"""Batch prediction of a trainer's checkpoint over a Dataset, the way Ray documents it:
``map_batches`` with a callable class that loads the checkpoint once in ``__init__``, on a pool of
actors. For a TorchTrainer checkpoint (a state dict) and for the XGBoost and LightGBM models."""

import os
import tempfile

import numpy as np
import pandas as pd
import pytest

import ember.data as rd
from ember import train

FEATURES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] - x[:, 2] > 0).astype(int)})


def _torch_loop(config):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), x @ torch.tensor([[1.0], [2.0], [-1.0]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with tempfile.TemporaryDirectory() as directory:
        torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
        train.report({"loss": loss.item()}, checkpoint=train.Checkpoint.from_directory(directory))


class TorchPredictor:
    def __init__(self, checkpoint):
        import torch

        self.model = torch.nn.Linear(3, 1)
        with checkpoint.as_directory() as directory:
            self.model.load_state_dict(torch.load(os.path.join(directory, "model.pt")))
        self.model.eval()

    def __call__(self, batch: dict) -> dict:
        import torch

        x = torch.as_tensor(np.stack([batch[name] for name in FEATURES], axis=1), dtype=torch.float32)
        with torch.inference_mode():
            return {"id": batch["id"], "prediction": self.model(x).numpy()[:, 0]}


def test_torch_checkpoint_predicts_over_a_dataset_on_an_actor_pool(cluster, tmp_path, frame):
    torch = pytest.importorskip("torch")
    from ember.train.torch import TorchTrainer

    result = TorchTrainer(
        _torch_loop,
        scaling_config=train.ScalingConfig(num_workers=1),
        run_config=train.RunConfig(name="predict", storage_path=str(tmp_path)),
    ).fit()
    assert result.error is None, result.error
    data = rd.from_pandas(frame[FEATURES].assign(id=np.arange(len(frame)))).repartition(4)
    out = (
        data.map_batches(
            TorchPredictor, fn_constructor_kwargs={"checkpoint": result.checkpoint}, concurrency=2, batch_size=100
        )
        .to_pandas()
        .sort_values("id")
    )
    model = TorchPredictor(result.checkpoint).model
    expected = model(torch.tensor(frame[FEATURES].to_numpy(), dtype=torch.float32)).detach().numpy()[:, 0]
    np.testing.assert_allclose(out["prediction"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


class BoosterPredictor:
    """Loads the model of either boosting trainer once per actor; ``__call__`` gets pandas batches."""

    def __init__(self, checkpoint, kind):
        self.kind = kind
        if kind == "xgboost":
            from ember.train.xgboost import XGBoostTrainer

            self.model = XGBoostTrainer.get_model(checkpoint)
        else:
            from ember.train.lightgbm import LightGBMTrainer

            self.model = LightGBMTrainer.get_model(checkpoint)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        features = batch[FEATURES]
        if self.kind == "xgboost":
            import xgboost

            features = xgboost.DMatrix(features)
        return pd.DataFrame({"id": batch["id"], "prediction": self.model.predict(features)})


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_boosting_checkpoint_predicts_over_a_dataset_on_an_actor_pool(cluster, tmp_path, frame, kind):
    library = pytest.importorskip(kind)
    if kind == "xgboost":
        from ember.train.xgboost import XGBoostTrainer as Trainer

        params = {"objective": "binary:logistic"}
    else:
        from ember.train.lightgbm import LightGBMTrainer as Trainer

        params = {"objective": "binary", "min_data_in_leaf": 5}
    result = Trainer(
        label_column="y",
        params=params,
        num_boost_round=5,
        datasets={"train": rd.from_pandas(frame)},
        scaling_config=train.ScalingConfig(num_workers=2),
        run_config=train.RunConfig(name=kind, storage_path=str(tmp_path)),
    ).fit()
    assert result.error is None, result.error
    data = rd.from_pandas(frame[FEATURES].assign(id=np.arange(len(frame)))).repartition(4)
    out = (
        data.map_batches(
            BoosterPredictor,
            fn_constructor_kwargs={"checkpoint": result.checkpoint, "kind": kind},
            concurrency=2,
            batch_format="pandas",
        )
        .to_pandas()
        .sort_values("id")
    )
    model = Trainer.get_model(result.checkpoint)
    features = frame[FEATURES] if kind == "lightgbm" else library.DMatrix(frame[FEATURES])
    np.testing.assert_allclose(out["prediction"].to_numpy(), model.predict(features), rtol=1e-6)
    assert ((out["prediction"].to_numpy() > 0.5) == frame["y"].to_numpy()).mean() > 0.9
