"""ember.train on the shared cluster with real worker processes: DDP really averages gradients,
reports and kept checkpoints on disk, a SIGKILLed worker restarts the group from the latest
checkpoint, errors come back as the user's exception, dataset shards, GPUs' visibility, an
interrupted fit releases its workers, and bad input fails fast."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import pytest
import torch
from conftest import wait_for

import ember
import ember.data as rd
from ember import train
from ember.train.torch import TorchTrainer, get_device, prepare_data_loader, prepare_model


def two(**kwargs):
    return train.ScalingConfig(num_workers=2, **kwargs)


def run(tmp_path, name="run", **kwargs):
    return train.RunConfig(name=name, storage_path=str(tmp_path / "results"), **kwargs)


def no_group_left():
    from ember.util import placement_group_table

    return all(entry["state"] == "REMOVED" for entry in placement_group_table().values())


def _data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)


def _ddp_loop(config):
    ctx = train.get_context()
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = prepare_model(torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = _data(ctx.get_world_rank())
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    params = [p.detach().flatten().tolist() for p in model.parameters()]
    with open(os.path.join(config["dir"], f"rank{ctx.get_world_rank()}.json"), "w") as out:
        json.dump(
            {
                "params": params,
                "world": ctx.get_world_size(),
                "local": [ctx.get_local_rank(), ctx.get_local_world_size(), ctx.get_node_rank()],
                "backend": torch.distributed.get_backend(),
                "device": str(get_device()),
                "ddp": type(model).__name__,
            },
            out,
        )
    train.report({"loss": loss.item()})


def test_ddp_ranks_fed_different_data_hold_the_averaged_step(cluster, tmp_path):
    result = TorchTrainer(
        _ddp_loop, train_loop_config={"dir": str(tmp_path)}, scaling_config=two(), run_config=run(tmp_path)
    ).fit()
    assert result.error is None, result.error
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0]["params"] == seen[1]["params"]
    assert [s["local"] for s in seen] == [[0, 2, 0], [1, 2, 0]]
    assert {s["backend"] for s in seen} == {"gloo"} and {s["device"] for s in seen} == {"cpu"}
    assert {s["ddp"] for s in seen} == {"DistributedDataParallel"}
    # The same step computed here: the mean of the two ranks' gradients.
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    grads = []
    for rank in range(2):
        model.zero_grad()
        x, y = _data(rank)
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    with torch.no_grad():
        expected = [(p - 0.5 * (g0 + g1) / 2).flatten().tolist() for p, g0, g1 in zip(model.parameters(), *grads)]
    flat = [value for param in seen[0]["params"] for value in param]
    assert flat == pytest.approx([value for param in expected for value in param], rel=1e-5)
    assert no_group_left()


def _checkpointing_loop(config):
    ctx = train.get_context()
    start = 0
    if train.get_checkpoint() is not None:
        with train.get_checkpoint().as_directory() as d:
            start = json.loads(open(os.path.join(d, "state.json")).read())["epoch"] + 1
    for epoch in range(start, config["epochs"]):
        if config.get("kill_at") == epoch and ctx.get_world_rank() == 1 and not os.path.exists(config["once"]):
            # Die only once the driver has the previous epoch's result: reports still in this
            # process's send queue would die with it, and the test is about resuming from a checkpoint.
            registered = config.get("registered")
            while registered and not os.path.exists(registered):
                time.sleep(0.01)
            open(config["once"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        if config.get("raise_at") == epoch and ctx.get_world_rank() == 1:
            raise ValueError(f"bad batch in epoch {epoch}")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"rank{ctx.get_world_rank()}.txt"), "w") as out:
                out.write(str(epoch))
            if ctx.get_world_rank() == 0:
                with open(os.path.join(d, "state.json"), "w") as out:
                    json.dump({"epoch": epoch}, out)
            loss = (epoch - 2.6) ** 2  # best at epoch 3, then 2
            train.report({"epoch": epoch, "loss": loss, "start": start}, checkpoint=train.Checkpoint.from_directory(d))


def test_reports_and_checkpoints_kept_by_score(cluster, tmp_path):
    keep = train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")
    result = train.DataParallelTrainer(
        _checkpointing_loop,
        train_loop_config={"epochs": 6},
        scaling_config=two(),
        run_config=run(tmp_path, checkpoint_config=keep),
    ).fit()
    assert result.error is None
    assert result.metrics == {"epoch": 5, "loss": pytest.approx(5.76), "start": 0}
    assert list(result.metrics_dataframe["epoch"]) == list(range(6))
    assert result.path == str(tmp_path / "results" / "run")
    kept = sorted(p for p in os.listdir(result.path) if p.startswith("checkpoint_"))
    # The two best (epochs 3 and 2) and the latest (5): the others were deleted from storage.
    assert kept == ["checkpoint_000002", "checkpoint_000003", "checkpoint_000005"]
    assert [m["epoch"] for _, m in result.best_checkpoints] == [2, 3, 5]
    assert result.checkpoint.path == os.path.join(result.path, "checkpoint_000005")
    # Both workers' files, merged into one directory.
    assert sorted(os.listdir(result.checkpoint.path)) == ["rank0.txt", "rank1.txt", "state.json"]
    restored = result.checkpoint.to_directory(str(tmp_path / "copy"))
    assert json.loads(open(os.path.join(restored, "state.json")).read()) == {"epoch": 5}



def test_checkpoints_go_through_a_pyarrow_filesystem_and_resume_from_it(cluster, tmp_path):
    # A URI storage path goes through pyarrow.fs (as s3:// or gs:// would): kept, deleted, resumed.
    keep = train.CheckpointConfig(num_to_keep=1)
    uri = f"file://{tmp_path}/remote"
    first = train.DataParallelTrainer(
        _checkpointing_loop,
        train_loop_config={"epochs": 3},
        scaling_config=two(),
        run_config=train.RunConfig(name="uri", storage_path=uri, checkpoint_config=keep),
    ).fit()
    assert first.error is None, first.error
    on_disk = tmp_path / "remote" / "uri"
    assert sorted(p.name for p in on_disk.iterdir() if p.name.startswith("checkpoint_")) == ["checkpoint_000002"]
    assert sorted(p.name for p in (on_disk / "checkpoint_000002").iterdir()) == ["rank0.txt", "rank1.txt", "state.json"]
    with first.checkpoint.as_directory() as local:
        assert json.loads(open(os.path.join(local, "state.json")).read()) == {"epoch": 2}
    again = train.DataParallelTrainer(
        _checkpointing_loop,
        train_loop_config={"epochs": 5},
        scaling_config=two(),
        run_config=train.RunConfig(name="uri2", storage_path=uri),
        resume_from_checkpoint=first.checkpoint,
    ).fit()
    assert again.error is None, again.error
    assert again.metrics["start"] == 3 and again.metrics["epoch"] == 4

def test_a_sigkilled_worker_restarts_the_group_from_the_latest_checkpoint(cluster, tmp_path):
    config = {"epochs": 5, "kill_at": 3, "once": str(tmp_path / "killed"), "registered": str(tmp_path / "epoch2")}

    class MarkEpoch2:
        def after_report(self, run_context, metrics, checkpoint):
            assert [m["epoch"] for m in metrics] == [metrics[0]["epoch"]] * 2  # both workers' reports
            if metrics[0]["epoch"] == 2:
                open(config["registered"], "w").close()

    result = TorchTrainer(
        _checkpointing_loop,
        train_loop_config=config,
        scaling_config=two(),
        run_config=run(tmp_path, failure_config=train.FailureConfig(max_failures=1), callbacks=[MarkEpoch2()]),
    ).fit()
    assert result.error is None, result.error
    assert os.path.exists(config["once"])
    history = [(m["epoch"], m["start"]) for m in result.metrics_history]
    # Epochs 0-2 in the first attempt; the second resumed after epoch 2's checkpoint.
    assert history == [(0, 0), (1, 0), (2, 0), (3, 3), (4, 3)]
    # Indices are never reused after a failure (rank 0 may have persisted a checkpoint for a report
    # rank 1 never made: such leftovers are deleted).
    kept = sorted(p for p in os.listdir(result.path) if p.startswith("checkpoint_"))
    assert len(kept) == 5 and kept[-1] == os.path.basename(result.checkpoint.path)
    assert json.loads(open(os.path.join(result.checkpoint.path, "state.json")).read()) == {"epoch": 4}
    assert no_group_left()


def test_without_max_failures_the_error_is_the_users_exception(cluster, tmp_path):
    result = train.DataParallelTrainer(
        _checkpointing_loop,
        train_loop_config={"epochs": 5, "raise_at": 2},
        scaling_config=two(),
        run_config=run(tmp_path),
    ).fit()
    assert isinstance(result.error, ValueError)
    assert "bad batch in epoch 2" in str(result.error) and "_checkpointing_loop" in str(result.error)
    # Rank 1 reported epochs 0 and 1 first: whatever rank 0 had reported by then counts.
    assert [m["epoch"] for m in result.metrics_history] == list(range(len(result.metrics_history)))
    if result.checkpoint is not None:
        assert result.checkpoint.path.endswith(f"checkpoint_{result.metrics['epoch']:06d}")
    # A worker SIGKILLed with no failures allowed: the attempt's error, not a hang.
    killed = train.DataParallelTrainer(
        _checkpointing_loop,
        train_loop_config={"epochs": 5, "kill_at": 0, "once": str(tmp_path / "killed")},
        scaling_config=two(),
        run_config=run(tmp_path, name="killed"),
    ).fit()
    assert isinstance(killed.error, ember.exceptions.ActorDiedError)
    assert no_group_left()


def _shard_loop(config):
    ctx = train.get_context()
    shard = train.get_dataset_shard("train")
    ids = [row["id"] for row in shard.iter_rows()]
    again = [row["id"] for row in shard.iter_rows()]  # a second epoch: the split runs again, whole
    if sorted(again) != sorted(ids):
        raise AssertionError(f"epoch 2 gave {sorted(again)}, epoch 1 {sorted(ids)}")
    whole = sum(len(batch["id"]) for batch in train.get_dataset_shard("valid").iter_batches())
    with open(os.path.join(config["dir"], f"shard{ctx.get_world_rank()}.json"), "w") as out:
        json.dump({"ids": ids, "valid": whole}, out)
    train.report({"rows": len(ids)})


def test_dataset_shards_are_disjoint_and_complete(cluster, tmp_path):
    result = train.DataParallelTrainer(
        _shard_loop,
        train_loop_config={"dir": str(tmp_path)},
        scaling_config=two(),
        run_config=run(tmp_path),
        datasets={"train": rd.range(100, override_num_blocks=5), "valid": rd.range(10)},
        dataset_config=train.DataConfig(datasets_to_split=["train"]),
    ).fit()
    assert result.error is None, result.error
    shards = [json.loads((tmp_path / f"shard{r}.json").read_text()) for r in range(2)]
    assert len(shards[0]["ids"]) == len(shards[1]["ids"]) == 50
    assert sorted(shards[0]["ids"] + shards[1]["ids"]) == list(range(100))
    assert [s["valid"] for s in shards] == [10, 10]  # not split: every worker has it whole


def _gpu_loop(config):
    loader = prepare_data_loader(torch.utils.data.DataLoader(list(range(10)), batch_size=2, shuffle=True))
    seen = sorted(int(i) for batch in loader for i in batch)
    train.report({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "seen": seen, "device": str(get_device())})


def test_use_gpu_makes_the_nodes_gpus_visible_and_the_loader_is_sharded(cluster, tmp_path):
    # The shared cluster declares two GPUs that CUDA cannot see: each worker sees both (NCCL's way),
    # and with no CUDA the process group falls back to gloo on the CPU.
    result = TorchTrainer(_gpu_loop, scaling_config=two(use_gpu=True), run_config=run(tmp_path)).fit()
    assert result.error is None, result.error
    assert result.metrics["visible"] == "0,1" and result.metrics["device"] == "cpu"
    assert len(result.metrics["seen"]) == 5  # rank 0's half of the DistributedSampler


def _never_reports():
    pass


def test_bad_input_fails_fast(cluster, tmp_path):
    with pytest.raises(ValueError, match="whole cluster has"):
        train.DataParallelTrainer(_never_reports, scaling_config=train.ScalingConfig(num_workers=40)).fit()
    with pytest.raises(ValueError, match="no node of the cluster"):
        train.DataParallelTrainer(
            _never_reports, scaling_config=train.ScalingConfig(resources_per_worker={"CPU": 64})
        ).fit()
    with pytest.raises(TypeError, match="cannot be serialized"):
        train.DataParallelTrainer(_never_reports, train_loop_config={"lock": threading.Lock()})
    with pytest.raises(TypeError):
        train.DataParallelTrainer("not a function")
    with pytest.raises(TypeError):
        train.DataParallelTrainer(_never_reports, datasets={"train": [1, 2]})
    with pytest.raises(RuntimeError, match="no train session"):
        train.report({"loss": 1})
    with pytest.warns(UserWarning, match="without calling ember.train.report"):
        result = train.DataParallelTrainer(_never_reports, scaling_config=two(), run_config=run(tmp_path)).fit()
    assert result.error is None and result.metrics == {} and result.checkpoint is None
    missing = train.DataParallelTrainer(
        lambda: train.get_dataset_shard("nope"), scaling_config=two(), run_config=run(tmp_path, name="missing")
    ).fit()
    assert isinstance(missing.error, KeyError) and "nope" in str(missing.error)
    assert no_group_left()


def _silent_until(config):
    while not os.path.exists(config["go"]):
        time.sleep(0.05)
    train.report({"done": 1})


def test_a_loop_that_does_not_report_gets_one_warning_with_its_ranks(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_TRAIN_REPORT_WARNING_S", "0.5")
    go = tmp_path / "go"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")

        def release():
            # The loops stay silent until the driver has warned, however slow this machine is.
            wait_for(lambda: any("have not called" in str(w.message) for w in seen), timeout=60, message="warning")
            go.write_text("")

        releaser = threading.Thread(target=release, daemon=True)
        releaser.start()
        result = train.DataParallelTrainer(
            _silent_until, train_loop_config={"go": str(go)}, scaling_config=two(), run_config=run(tmp_path)
        ).fit()
        releaser.join()
    assert result.error is None and result.metrics == {"done": 1}
    silent = [str(w.message) for w in seen if "have not called" in str(w.message)]
    assert len(silent) == 1 and "rank(s) [0, 1]" in silent[0]


def test_keyboard_interrupt_stops_the_workers_and_releases_the_group(tmp_path):
    marker = tmp_path / "pids"
    code = textwrap.dedent(
        f"""
        import os, signal, sys, threading, time
        import ember
        from ember import train
        from ember.util import placement_group_table

        ember.init(num_cpus=2)
        marker = {str(marker)!r}

        def loop():
            train.report({{"step": 0}})
            with open(marker + str(train.get_context().get_world_rank()), "w") as out:
                out.write(str(os.getpid()))
            time.sleep(600)

        def interrupt():
            while not all(os.path.exists(marker + str(r)) for r in range(2)):
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        trainer = train.DataParallelTrainer(
            loop, scaling_config=train.ScalingConfig(num_workers=2),
            run_config=train.RunConfig(name="x", storage_path={str(tmp_path)!r}))
        try:
            trainer.fit()
        except KeyboardInterrupt:
            pids = [int(open(marker + str(r)).read()) for r in range(2)]
            deadline = time.time() + 20
            while time.time() < deadline and any(os.path.exists(f"/proc/{{p}}") for p in pids):
                time.sleep(0.05)
            print("workers gone:", not any(os.path.exists(f"/proc/{{p}}") for p in pids))
            print("groups removed:", all(e["state"] == "REMOVED" for e in placement_group_table().values()))
        ember.shutdown()
        """
    )
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env)
    assert "workers gone: True" in done.stdout and "groups removed: True" in done.stdout, done.stdout + done.stderr
    assert "interrupted" in done.stderr
