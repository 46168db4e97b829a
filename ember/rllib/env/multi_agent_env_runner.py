"""``MultiAgentEnvRunner``: steps a few ``MultiAgentEnv`` copies, each agent acting with the numpy
policy of the module ``policy_mapping_fn`` maps it to, and returns one batch per module.

Agents may come and go (only those with an observation act) and take turns. An agent's transition
stays open from its action until its next observation (or its end), collecting every reward it gets
meanwhile; so a turn-based agent's reward lands on the action that earned it. Transitions of one
agent in one episode form a sequence; a sequence cut by the end of a sample call bootstraps from
the value of its next observation, as a truncated single-agent fragment does. An agent's open
transition carries over to the next call.

The mapping of agents to modules is made once per agent per episode (RLlib's semantics) by calling
``policy_mapping_fn(agent_id, episode)``; ``episode.id_`` is unique per episode.
"""

import itertools

import numpy as np

from ember.rllib.env.env_factory import EnvContext, ObsFlattener, call_env
from ember.rllib.env.env_runner import _one_blas_thread

ALL = "__all__"
SEQ_KEYS = ("obs", "actions", "action_logp", "action_dist_inputs", "vf_preds", "rewards", "terminateds", "truncateds")


class EpisodeRef:
    """What ``policy_mapping_fn`` gets as ``episode``: an id unique to the episode and its env."""

    def __init__(self, id_: str, env_index: int):
        self.id_ = id_
        self.env_index = env_index


def map_agent(mapping_fn, agent_id, episode, module_ids) -> str:
    """Call the user's mapping function and check that it names a known module."""
    module_id = mapping_fn(agent_id, episode)
    if module_id not in module_ids:
        raise ValueError(
            f"policy_mapping_fn mapped agent {agent_id!r} to {module_id!r}, which is not one of the "
            f"policies {sorted(map(str, module_ids))}"
        )
    return module_id


class _Episode:
    def __init__(self, ref: EpisodeRef):
        self.ref = ref
        self.mapping: dict = {}
        self.total = 0.0
        self.length = 0
        self.module_returns: dict = {}


class MultiAgentEnvRunner:
    """The multi-agent counterpart of ``EnvRunner`` (same constructor and ``sample``/``evaluate``)."""

    def __init__(self, spec, env_config: dict, num_envs: int, worker_index: int = 0, num_workers: int = 0, seed=None):
        self.spec = spec
        self.mapping_fn = spec.multi_agent.policy_mapping_fn
        self.module_ids = set(spec.multi_agent.module_spaces)
        self.flatten = {mid: ObsFlattener(obs_space) for mid, (obs_space, _) in spec.multi_agent.module_spaces.items()}
        self.env_config, self.worker_index, self.seed = env_config, worker_index, seed
        self.envs = [
            call_env(
                spec.name, "creating", lambda i=i: spec.creator(EnvContext(env_config, worker_index, i, num_workers))
            )
            for i in range(num_envs)
        ]
        self.rng = np.random.default_rng(None if seed is None else [seed, worker_index])
        self.eval_rng = np.random.default_rng(None if seed is None else [seed, worker_index, 1])
        self.counter = itertools.count()
        self.eval_calls = 0  # each evaluation starts from new seeds, as EnvRunner's does
        self.state = None  # per env: [obs dict, open transitions {agent: dict}, _Episode]
        self.blas = _one_blas_thread()

    # ---- episodes -----------------------------------------------------------------------------------

    def _reset(self, i: int, seed=None) -> list:
        obs, _ = call_env(self.spec.name, "resetting", lambda: self.envs[i].reset(seed=seed), self._where(i))
        episode = _Episode(EpisodeRef(f"{self.worker_index}-{i}-{next(self.counter)}", i))
        return [obs, {}, episode]

    def _where(self, i: int) -> str:
        return f" (env runner {self.worker_index}, sub-env {i})"

    def _module(self, episode: _Episode, agent_id) -> str:
        if agent_id not in episode.mapping:
            episode.mapping[agent_id] = map_agent(self.mapping_fn, agent_id, episode.ref, self.module_ids)
        return episode.mapping[agent_id]

    # ---- stepping -------------------------------------------------------------------------------------

    def _act(self, state: list, policies: dict, explore: bool, rng) -> list:
        """Actions for every agent with an observation, one batched policy call per module."""
        wanted: dict = {}  # module -> [(env index, agent id, raw obs)]
        for i, (obs, _, episode) in enumerate(state):
            for agent_id, agent_obs in obs.items():
                wanted.setdefault(self._module(episode, agent_id), []).append((i, agent_id, agent_obs))
        actions = [{} for _ in state]
        acted = []
        for module_id, rows in wanted.items():
            flat = self.flatten[module_id]([o for _, _, o in rows])
            env_actions, extra = policies[module_id].compute_actions(flat, explore, rng)
            for k, (i, agent_id, _) in enumerate(rows):
                action = env_actions[k]
                actions[i][agent_id] = action.item() if np.ndim(action) == 0 else action
                acted.append((i, agent_id, module_id, flat[k], {key: value[k] for key, value in extra.items()}))
        return actions, acted

    def _run(self, policies: dict, explore: bool, rng, num_steps=None, num_episodes=None, record=True) -> dict:
        state = self.state if record else None
        if state is None:
            offset = 0 if record else 500 + 10 * self.eval_calls
            base = None if self.seed is None else self.seed * 1000 + self.worker_index * 100 + offset
            state = [self._reset(i, None if base is None else base + i) for i in range(len(self.envs))]
        sequences: dict = {}  # (episode id, agent id) -> (module id, [transitions])
        ended, steps = [], 0
        while (num_steps is not None and steps < num_steps * len(self.envs)) or (
            num_episodes is not None and len(ended) < num_episodes
        ):
            actions, acted = self._act(state, policies, explore, rng)
            for i, agent_id, module_id, obs, extra in acted:
                state[i][1][agent_id] = {"module": module_id, "obs": obs, "rewards": 0.0, **extra}
            for i, env in enumerate(self.envs):
                obs, rewards, terms, truncs, _ = call_env(
                    self.spec.name, "stepping", lambda e=env, a=actions[i]: e.step(a), self._where(i)
                )
                steps += 1
                _, open_, episode = state[i]
                episode.length += 1
                for agent_id, reward in rewards.items():
                    reward = float(reward)
                    episode.total += reward
                    module_id = self._module(episode, agent_id)
                    episode.module_returns[module_id] = episode.module_returns.get(module_id, 0.0) + reward
                    if agent_id in open_:
                        open_[agent_id]["rewards"] += reward
                all_term, all_trunc = bool(terms.get(ALL, False)), bool(truncs.get(ALL, False))
                for agent_id in list(open_):
                    term = all_term or bool(terms.get(agent_id, False))
                    trunc = not term and (all_trunc or bool(truncs.get(agent_id, False)))
                    if not (term or trunc or agent_id in obs):
                        continue  # waiting for its turn: the transition stays open
                    t = open_.pop(agent_id)
                    t["terminateds"], t["truncateds"] = term, trunc
                    t["next_obs"] = self.flatten[t["module"]]([obs[agent_id]])[0] if agent_id in obs else t["obs"]
                    if record:
                        key = (episode.ref.id_, agent_id)
                        sequences.setdefault(key, (t["module"], []))[1].append(t)
                if all_term or all_trunc:
                    ended.append((episode.total, episode.length, dict(episode.module_returns)))
                    state[i] = self._reset(i)
                else:
                    done = {a for a in obs if terms.get(a) or truncs.get(a)}
                    state[i][0] = {a: o for a, o in obs.items() if a not in done}
        if record:
            self.state = state
        return {"sequences": sequences, "ended": ended, "num_env_steps": steps}

    def sample(self, policies: dict, num_steps: int, explore: bool = True) -> dict:
        """Step every env ``num_steps`` times; returns {"modules": {module_id: batch}, episode stats}.

        A module's batch holds its agents' sequences back to back (``seq_lens`` gives their
        lengths), each key an array [sum(seq_lens), ...], plus ``next_vf`` for bootstrapping."""
        with self.blas():
            run = self._run(policies, explore, self.rng, num_steps=num_steps)
        modules: dict = {}
        for module_id, transitions in run["sequences"].values():
            part = modules.setdefault(module_id, {key: [] for key in (*SEQ_KEYS, "next_obs")} | {"seq_lens": []})
            part["seq_lens"].append(len(transitions))
            for key in (*SEQ_KEYS, "next_obs"):
                part[key].extend(t[key] for t in transitions)
        batches = {}
        for module_id, part in modules.items():
            batch = {key: np.asarray(values) for key, values in part.items()}
            batch["rewards"] = batch["rewards"].astype(np.float32)
            policy = policies[module_id]
            if hasattr(policy, "value"):
                next_vf = policy.value(batch["next_obs"].astype(np.float32)).astype(np.float32)
                batch["next_vf"] = np.where(batch["terminateds"], np.float32(0), next_vf)
            batches[module_id] = batch
        return {
            "modules": batches,
            "num_env_steps": run["num_env_steps"],
            **_episode_arrays(run["ended"]),
        }

    def evaluate(self, policies: dict, duration: int, unit: str = "episodes", explore: bool = False) -> dict:
        """Fresh episodes with the given policies (greedy unless ``explore``); episode stats only."""
        with self.blas():
            if unit == "episodes":
                run = self._run(policies, explore, self.eval_rng, num_episodes=duration, record=False)
            else:
                steps = max(1, -(-duration // len(self.envs)))
                run = self._run(policies, explore, self.eval_rng, num_steps=steps, record=False)
        self.eval_calls += 1
        ended = run["ended"][:duration] if unit == "episodes" else run["ended"]
        return {"num_env_steps": run["num_env_steps"], **_episode_arrays(ended)}

    def apply(self, func):
        return func(self)

    def ping(self) -> int:
        import os

        return os.getpid()

    def stop(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:
                pass  # best effort: the runner is going away


def _episode_arrays(ended: list) -> dict:
    per_module: dict = {}
    for _, _, module_returns in ended:
        for module_id, value in module_returns.items():
            per_module.setdefault(module_id, []).append(value)
    return {
        "episode_returns": np.array([r for r, _, _ in ended], np.float64),
        "episode_lengths": np.array([n for _, n, _ in ended], np.int64),
        "module_episode_returns": per_module,
    }
