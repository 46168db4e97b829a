"""``EnvRunner``: steps a few envs with a numpy policy and returns numpy sample batches.

The same class runs as an actor (``num_env_runners > 0``) or inside the driver (0). A sample call
gets the iteration's policy (its weights travel through the object store once per iteration, not
per step) and returns time-major arrays ``[T, N, ...]`` for T steps of N envs, plus the episodes
that ended. Envs keep running across calls, as RLlib's do: an episode may span iterations.
"""

import contextlib
import os

import numpy as np

from ember.rllib.env.env_factory import VectorEnv

# Keys of a sample batch, time-major [T, N, ...].
STEP_KEYS = ("obs", "rewards", "terminateds", "truncateds", "next_obs")


class EnvRunner:
    """Steps ``num_envs`` copies of the env; ``worker_index`` 0 is the driver's own runner."""

    def __init__(self, spec, env_config: dict, num_envs: int, worker_index: int = 0, num_workers: int = 0, seed=None):
        self.spec = spec
        self.env_config = env_config
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.seed = seed
        self.vec = VectorEnv(spec, env_config, num_envs, worker_index, num_workers)
        self.rng = np.random.default_rng(None if seed is None else [seed, worker_index])
        self.obs = None
        self.eval_vec = None
        self.eval_rng = np.random.default_rng(None if seed is None else [seed, worker_index, 1])
        self.eval_episodes = 0
        self.blas = _one_blas_thread()

    def sample(self, policy, num_steps: int, explore: bool = True) -> dict:
        """Step every env ``num_steps`` times with ``policy``; returns the batch (see module doc)."""
        with self.blas():
            return self._sample(policy, num_steps, explore)

    def _sample(self, policy, num_steps: int, explore: bool) -> dict:
        if self.obs is None:
            self.obs = self.vec.reset(None if self.seed is None else self.seed * 1000 + self.worker_index * 100)
        columns: dict = {key: [] for key in STEP_KEYS}
        extras: dict = {}
        obs = self.obs
        for _ in range(num_steps):
            env_actions, extra = policy.compute_actions(obs, explore, self.rng)
            next_obs, rewards, terminateds, truncateds, final_obs = self.vec.step(env_actions)
            for key, value in (
                ("obs", obs),
                ("rewards", rewards),
                ("terminateds", terminateds),
                ("truncateds", truncateds),
                ("next_obs", final_obs),
            ):
                columns[key].append(value)
            for key, value in extra.items():
                extras.setdefault(key, []).append(value)
            obs = next_obs
        self.obs = obs
        batch = {key: np.stack(values) for key, values in (*columns.items(), *extras.items())}
        if hasattr(policy, "value"):
            steps, envs = batch["rewards"].shape
            flat_next = batch["next_obs"].reshape(steps * envs, -1)
            next_vf = policy.value(flat_next).reshape(steps, envs).astype(np.float32)
            batch["next_vf"] = np.where(batch["terminateds"], np.float32(0), next_vf)
        episodes = self.vec.pop_episodes()
        batch["episode_returns"] = np.array([r for r, _ in episodes], np.float64)
        batch["episode_lengths"] = np.array([n for _, n in episodes], np.int64)
        return batch

    def evaluate(self, policy, duration: int, unit: str = "episodes", explore: bool = False) -> dict:
        """Run fresh evaluation episodes: ``duration`` episodes, or until ``duration`` steps were
        taken; returns their returns and lengths (only episodes that ended)."""
        with self.blas():
            return self._evaluate(policy, duration, unit, explore)

    def _evaluate(self, policy, duration: int, unit: str, explore: bool) -> dict:
        if self.eval_vec is None:
            self.eval_vec = VectorEnv(self.spec, self.env_config, self.vec.num_envs, self.worker_index, 0)
        seed = None if self.seed is None else self.seed * 1000 + 500 + self.worker_index * 100 + self.eval_episodes
        obs = self.eval_vec.reset(seed)
        self.eval_vec.pop_episodes()
        episodes, steps = [], 0
        while (len(episodes) if unit == "episodes" else steps) < duration:
            actions, _ = policy.compute_actions(obs, explore, self.eval_rng)
            obs, *_ = self.eval_vec.step(actions)
            steps += self.eval_vec.num_envs
            episodes.extend(self.eval_vec.pop_episodes())
        if unit == "episodes":
            episodes = episodes[:duration]
        self.eval_episodes += len(episodes)
        return {
            "episode_returns": np.array([r for r, _ in episodes], np.float64),
            "episode_lengths": np.array([n for _, n in episodes], np.int64),
            "num_env_steps": steps,
        }

    def apply(self, func):
        """Run ``func(self)`` here (``EnvRunnerGroup.foreach_env_runner``)."""
        return func(self)

    def ping(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        self.vec.close()
        if self.eval_vec is not None:
            self.eval_vec.close()


def _one_blas_thread():
    """A context that keeps numpy's BLAS on one thread. The policy's matmuls are tiny: a second
    BLAS thread only adds a hand-off, and on a busy machine (other runners, the learner) each
    call then waits for a core; measured on 2 loaded cores: 3k env steps/s instead of 40k."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")
