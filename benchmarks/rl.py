"""ember.rllib against RLlib 2.60 (its own venv), same script and hyperparameters, in one run.

Rows, each system in its own subprocess per row (the same worker code; only ``import ember as ray``
versus ``import ray`` differs):

- ppo450: PPO on CartPole-v1 with RLlib's tuned example values (lr 3e-4, 6 epochs, vf_loss_coeff
  0.01, one hidden layer of 32 linear units shared with the value head, 4000 steps per batch,
  minibatch 128, 2 env runners, seed 0), trained until ``env_runners/episode_return_mean`` >= 450
  (mean of the last 100 episodes) or ``--cap`` seconds. Time is wall clock from ``build_algo()``
  (env runner start-up included) to the iteration that reaches 450; env steps are the lifetime count.
- sampleN: sampling throughput with N env runners (1 env each, the PPO policy, explore on): env
  steps per second of the sampling calls PPO's ``training_step`` makes (4000 steps a round), after
  two warm-up rounds, over at least ``--sample-seconds`` seconds. No learner update in between.

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/rl.py                  # both systems, all rows
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/rl.py --systems ember --rows ppo450
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = ("ppo450", "sample1", "sample2")
SYSTEMS = ("ember", "rllib")
CPUS = 2
TARGET = 450.0
BATCH = 4000


def ppo_config(PPOConfig, num_env_runners: int, seed: int):
    """RLlib's tuned_examples/ppo/cartpole_ppo.py settings (the rest are both systems' defaults)."""
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=1)
        .training(
            lr=3e-4,
            num_epochs=6,
            vf_loss_coeff=0.01,
            train_batch_size_per_learner=BATCH,
            minibatch_size=128,
        )
        .rl_module(model_config={"fcnet_hiddens": [32], "fcnet_activation": "linear", "vf_share_layers": True})
        .debugging(seed=seed)
    )


def count_steps(sampled) -> int:
    """Env steps in what RLlib's synchronous_parallel_sample returns (nested lists of episodes)."""
    if isinstance(sampled, (list, tuple)):
        return sum(count_steps(s) for s in sampled)
    return sampled.env_steps() if hasattr(sampled, "env_steps") else len(sampled)


def worker(system: str, row: str, cap: float, sample_seconds: float, seed: int) -> dict:
    if system == "ember":
        import ember as ray
        from ember.rllib.algorithms.ppo import PPOConfig

        ray.init(num_cpus=CPUS)
    else:
        import ray
        from ray.rllib.algorithms.ppo import PPOConfig

        ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    runners = int(row[len("sample") :]) if row.startswith("sample") else 2
    config = ppo_config(PPOConfig, runners, seed)
    if system == "ember":
        config.reporting(progress=False)
    started = time.perf_counter()
    algo = config.build_algo()
    built = time.perf_counter() - started
    out = {"system": system, "row": row, "build_s": built}
    try:
        if row == "ppo450":
            out.update(reached=False, curve=[])
            while time.perf_counter() - started < cap:
                result = algo.train()
                mean = result["env_runners"].get("episode_return_mean", float("nan"))
                steps = result["num_env_steps_sampled_lifetime"]
                elapsed = time.perf_counter() - started
                out["curve"].append((round(elapsed, 2), int(steps), round(float(mean), 1)))
                print(
                    f"  {system} it {len(out['curve'])} steps {steps} return {mean:.1f} t {elapsed:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                if mean >= TARGET:
                    out.update(reached=True, seconds=elapsed, env_steps=int(steps), iterations=len(out["curve"]))
                    break
            out["cap_s"] = cap
        else:
            if system == "ember":

                def one_round():
                    return algo.sample(algo.acting_policy(True), BATCH)[1]
            else:
                from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

                def one_round():
                    sampled = synchronous_parallel_sample(
                        worker_set=algo.env_runner_group, max_env_steps=BATCH, concat=False, _uses_new_env_runners=True
                    )
                    return count_steps(sampled)

            for _ in range(2):
                one_round()
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < sample_seconds:
                steps += one_round()
            out.update(env_steps=steps, steps_per_s=steps / (time.perf_counter() - t0))
    finally:
        algo.stop()
        ray.shutdown()
    return out


def run_row(system: str, row: str, args) -> dict:
    env = dict(os.environ)
    if system == "ember":
        python = sys.executable
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    else:
        python = args.rllib_python
        env.pop("PYTHONPATH", None)
    cmd = [python, os.path.abspath(__file__), "--worker", system, "--rows", row, "--cap", str(args.cap)]
    cmd += ["--sample-seconds", str(args.sample_seconds), "--seed", str(args.seed)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=args.cap + 600)
    for line in proc.stdout.splitlines():
        if line.startswith("@@result "):
            result = json.loads(line[len("@@result ") :])
            result["load"] = (load_before, os.getloadavg()[0])
            return result
    return {"system": system, "row": row, "error": f"exit {proc.returncode}, no result"}


def fmt(result: dict | None, row: str) -> str:
    if result is None:
        return "-"
    if "error" in result:
        return "failed"
    if row == "ppo450":
        if not result["reached"]:
            return f"not reached in {result['cap_s']:.0f} s"
        return f"{result['seconds']:.1f} s, {result['env_steps']:,} steps, {result['iterations']} it"
    return f"{result['steps_per_s']:,.0f} steps/s"


def ratio(ember_result, rllib_result, row: str) -> str:
    """Speed-up of Ember over RLlib (>1: Ember is faster); '>x' when RLlib did not reach 450."""
    if not ember_result or not rllib_result or "error" in ember_result or "error" in rllib_result:
        return ""
    if row == "ppo450":
        if not ember_result["reached"]:
            return ""
        if not rllib_result["reached"]:
            return f"> {rllib_result['cap_s'] / ember_result['seconds']:.1f}x"
        return f"{rllib_result['seconds'] / ember_result['seconds']:.2f}x"
    return f"{ember_result['steps_per_s'] / rllib_result['steps_per_s']:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=SYSTEMS)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--cap", type=float, default=300.0, help="seconds before ppo450 gives up")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rllib-python", default=os.environ.get("RAY_PYTHON", "/work/ray-venv/bin/python"))
    parser.add_argument("--json", help="also write every result here")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.worker:
        for row in rows:
            result = worker(args.worker, row, args.cap, args.sample_seconds, args.seed)
            print("@@result " + json.dumps(result), flush=True)
        return
    systems = [s for s in args.systems.split(",") if s]
    results: dict = {}
    for row in rows:
        for system in systems:
            print(f"{row} on {system} ...", file=sys.stderr, flush=True)
            results[(system, row)] = run_row(system, row, args)
    names = {
        "ppo450": "PPO CartPole-v1 to return 450",
        "sample1": "sampling, 1 env runner",
        "sample2": "sampling, 2 env runners",
    }
    print("\n| row | Ember | RLlib 2.60 | Ember speed-up |\n|---|---:|---:|---:|")
    for row in rows:
        e, r = results.get(("ember", row)), results.get(("rllib", row))
        print(f"| {names[row]} | {fmt(e, row)} | {fmt(r, row)} | {ratio(e, r, row)} |")
    loads = [v["load"] for v in results.values() if "load" in v]
    if loads:
        low, high = min(min(x) for x in loads), max(max(x) for x in loads)
        print(f"\nload average (1 min) at row starts/ends: {low:.1f} to {high:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{s}/{r}": v for (s, r), v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
