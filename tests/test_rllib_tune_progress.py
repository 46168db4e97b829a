"""The learning curves of RLlib algorithms run as Tune trials: one view with a line per trial, fed
from the results the Tuner receives, in a real kernel; its saved-notebook snapshot; nothing added
outside a notebook or with ``verbose=0``."""

import pytest

from ember import tune
from ember.rllib.algorithms.ppo import PPOConfig
from ember.tune.algorithm_progress import searched_paths, trial_label, wrap
from tests.conftest import wait_for


def result(iteration: int, steps: int, mean: float, low: float, high: float) -> dict:
    return {
        "env_runners": {
            "episode_return_mean": mean,
            "episode_return_min": low,
            "episode_return_max": high,
            "num_env_steps_sampled_per_s": 5000.0,
        },
        "learners": {"default_policy": {"policy_loss": -0.02, "vf_loss": 4.0, "entropy": 0.69}},
        "num_env_steps_sampled_lifetime": steps,
        "training_iteration": iteration,
    }


def test_labels_name_the_searched_settings():
    space = (
        PPOConfig()
        .environment("CartPole-v1")
        .training(lr=tune.grid_search([1e-3, 3e-4]), gamma=tune.uniform(0.9, 0.99))
        .to_dict()
    )
    paths = searched_paths(space)
    assert sorted(paths) == [("gamma",), ("lr",)]
    config = {**space, "lr": 0.0003, "gamma": 0.95123}
    label = trial_label("PPO_ab12c_00001", config, paths)
    assert label.startswith("PPO_ab12c_00001 (") and "lr=0.0003" in label and "gamma=0.9512" in label
    assert trial_label("PPO_ab12c_00001", config, []) == "PPO_ab12c_00001"


def test_outside_a_kernel_or_with_verbose_0_tunes_display_is_kept_as_is():
    class TuneDisplay:
        pass

    display = TuneDisplay()
    assert wrap(display, "exp", {"lr": tune.grid_search([1, 2])}, verbose=1) is display
    assert wrap(display, "exp", {}, verbose=0) is display


def test_one_view_takes_a_series_per_trial_and_snapshots_them_all():
    pytest.importorskip("ipywidgets")
    from ember.rllib.progress import training_view

    view = training_view("exp", band=False, title="exp: episode return per trial")
    # Results of two trials arrive interleaved, as the Tuner receives them.
    view.report_result(result(1, 200, 20.0, 9.0, 40.0), series="PPO_0", label="PPO_0 (lr=0.001)")
    view.report_result(result(1, 200, 15.0, 8.0, 30.0), series="PPO_1", label="PPO_1 (lr=0.0003)")
    view.report_result(result(2, 400, 30.0, 10.0, 60.0), series="PPO_0")
    view.report_result(result(2, 400, 18.0, 9.0, 33.0), series="PPO_1")
    view.set_status("PPO_0", "TERMINATED")
    assert view.sources[("return_mean", "PPO_0")].data == {"x": [200, 400], "y": [20.0, 30.0]}
    assert view.sources[("return_mean", "PPO_1")].data == {"x": [200, 400], "y": [15.0, 18.0]}
    assert len(view.figures) == 1 and not view.bands  # one plot of the mean, no min-max bands
    legend = [item.label["value"] for item in view.figures["return_mean"].legend[0].items]
    assert legend == ["PPO_0 (lr=0.001)", "PPO_1 (lr=0.0003)"]
    rows = view.history.table()
    assert [row["trial"] for row in rows] == ["PPO_0", "PPO_1"]
    assert rows[0]["status"] == "TERMINATED" and rows[1]["return_max"] == 33.0 and rows[0]["iter"] == 2
    for column in ("iter", "env_steps", "return_mean", "return_min", "return_max", "steps_per_s", "policy_loss"):
        assert f"<th>{column}</th>" in view.table.value
    snapshot = view.snapshot_html()
    assert view.table.value in snapshot and snapshot.count("<polyline") == 2 and "<polygon" not in snapshot
    assert "PPO_1 (lr=0.0003)</text>" in snapshot and "400 env steps" in snapshot


def test_a_tune_run_of_ppo_in_a_kernel_feeds_one_curve_view(tmp_path):
    pytest.importorskip("ipykernel")
    from conftest import ember_processes, shared_cluster_pids
    from kernel_session import KernelSession

    kernel = KernelSession()
    try:
        kernel.execute(
            "import ember\nfrom ember import tune\nfrom ember.rllib.algorithms.ppo import PPOConfig\n"
            "ember.init(num_cpus=2)\n"
            "config = (PPOConfig().environment('CartPole-v1').env_runners(num_env_runners=0)"
            ".training(lr=tune.grid_search([1e-3, 3e-4]), train_batch_size_per_learner=200, minibatch_size=100,"
            " num_epochs=1).rl_module(model_config={'fcnet_hiddens': [16]}).debugging(seed=3))"
        )
        fit = kernel.execute(
            "tuner = tune.Tuner('PPO', param_space=config, run_config=tune.RunConfig(name='curves', "
            f"storage_path={str(tmp_path)!r}, stop={{'training_iteration': 2}}))\n"
            "grid = tuner.fit()",
            timeout=180,
        )
        model = kernel.execute(
            "v = tuner._progress.view\n"
            "sorted((name, [r['env_steps'] for r in rows], [r['iter'] for r in rows], v.labels[name],"
            " v.history.status.get(name)) for name, rows in v.history.rows.items())"
        )
        quiet = kernel.execute(
            "t = tune.Tuner('PPO', param_space=config, run_config=tune.RunConfig(name='quiet', "
            f"storage_path={str(tmp_path)!r}, stop={{'training_iteration': 1}}, verbose=0))\n"
            "t.fit(); hasattr(t._progress, 'curves')"
        )
        kernel.execute("ember.shutdown()")
    finally:
        kernel.shutdown()
    wait_for(
        lambda: not [p for p in ember_processes() if p.pid not in shared_cluster_pids()],
        timeout=15,
        message="the kernel's cluster to go",
    )
    series = eval(model.result()["text/plain"])
    assert len(series) == 2
    for name, steps, iterations, label, status in series:
        assert iterations == [1, 2] and steps == sorted(steps) and steps[0] > 0 and len(set(steps)) == 2
        assert label.startswith(name + " (lr=") and status == "TERMINATED"
    assert {label.split("lr=")[1].rstrip(")") for *_, label, _ in series} == {"0.001", "0.0003"}

    messages = fit.messages()
    widgets = [
        m
        for m in messages
        if m["msg_type"] == "display_data" and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
    ]
    assert len(widgets) == 2  # Tune's trial table, then the one curve view of every trial
    curves = [m for m in widgets if "ember-rl" in m["content"]["data"]["text/html"]]
    assert len(curves) == 1
    view_id = curves[0]["content"]["transient"]["display_id"]
    # The snapshot a saved notebook keeps: renewed when the run ends, both trials' rows and lines.
    final = [
        m
        for m in messages
        if m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == view_id
    ][-1]["content"]["data"]["text/html"]
    assert final.count("<tr class='ember-trial'>") == 2 and final.count("<polyline") == 2
    assert "TERMINATED" in final and "lr=0.0003" in final
    assert "ember.rllib:" not in fit.stderr()
    assert quiet.result()["text/plain"] == "False"
