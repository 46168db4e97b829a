"""Making environments from what ``config.environment(env=...)`` was given, and stepping several.

``resolve_env`` runs in the driver at build time: it turns a registered name, a gymnasium id or an
env class into a creator, makes one env to learn its spaces, and reports an unknown id with the
closest registered names. ``VectorEnv`` steps a list of envs in one process with "same step"
autoreset: when an episode ends, the final observation is kept (for bootstrapping a truncated
episode's value) and the env is reset at once. Exceptions from the user's env keep their type and
traceback and gain a note naming the env and the call.

Nothing here imports torch: env runners are plain numpy processes.
"""

import difflib
from dataclasses import dataclass

import numpy as np


class EnvContext(dict):
    """The ``env_config`` a creator receives, with where it runs (RLlib's ``EnvContext``)."""

    def __init__(self, env_config: dict, worker_index: int = 0, vector_index: int = 0, num_workers: int = 0):
        super().__init__(env_config or {})
        self.worker_index = worker_index
        self.vector_index = vector_index
        self.num_workers = num_workers

    def __reduce__(self):
        return (EnvContext, (dict(self), self.worker_index, self.vector_index, self.num_workers))


@dataclass
class EnvSpec:
    """A resolved environment: its display name, a creator and its spaces."""

    name: str
    creator: object  # callable(EnvContext) -> env
    observation_space: object
    action_space: object
    multi_agent: object = None  # a MultiAgentSpec for a MultiAgentEnv


@dataclass
class MultiAgentSpec:
    """A multi-agent env's resolved settings: how agents map to modules and each module's spaces."""

    policy_mapping_fn: object
    module_spaces: dict  # module id -> (observation space, action space)
    agent_spaces: dict  # agent id -> (observation space, action space), as the env declares them


class _GymMaker:
    """Creator for a gymnasium id: ``gymnasium.make(id, **env_config)`` (picklable, unlike a lambda)."""

    def __init__(self, env_id: str):
        self.env_id = env_id

    def __call__(self, env_config):
        import gymnasium as gym

        return gym.make(self.env_id, **dict(env_config))


def env_name(env) -> str:
    return env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__)


def make_creator(env):
    """The creator for ``env`` (a registered name, a gymnasium id or a class/callable)."""
    from ember.rllib.env.registry import registered_creator

    if isinstance(env, str):
        creator = registered_creator(env)
        if creator is not None:
            return creator
        _check_gym_id(env)
        return _GymMaker(env)
    if callable(env):
        return env
    raise TypeError(f"env must be a registered name, a gymnasium id or an env class, got {type(env).__name__}")


def _check_gym_id(env_id: str) -> None:
    import gymnasium as gym

    from ember.rllib.env.registry import _CREATORS

    try:
        gym.spec(env_id)
    except gym.error.Error:
        known = list(gym.registry) + list(_CREATORS)
        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown environment {env_id!r}: it is neither registered with register_env() nor a gymnasium id.{hint}"
        ) from None


def resolve_env(env, env_config: dict) -> EnvSpec:
    """Resolve ``env`` and make one instance to read its spaces (closed again)."""
    name = env_name(env)
    creator = make_creator(env)
    instance = call_env(name, "creating", lambda: creator(EnvContext(env_config)))
    try:
        from ember.rllib.env.multi_agent_env import MultiAgentEnv

        if isinstance(instance, MultiAgentEnv):
            return EnvSpec(name, creator, None, None, MultiAgentSpec(None, {}, agent_spaces(name, instance)))
        observation_space = getattr(instance, "observation_space", None)
        action_space = getattr(instance, "action_space", None)
        if observation_space is None or action_space is None:
            raise TypeError(f"env {name!r} has no observation_space/action_space: is it a gymnasium.Env?")
        return EnvSpec(name, creator, observation_space, action_space)
    finally:
        close = getattr(instance, "close", None)
        if close is not None:
            close()


def agent_spaces(name: str, env) -> dict:
    """{agent id: (observation space, action space)} of a MultiAgentEnv, for every possible agent."""
    agents = list(getattr(env, "possible_agents", None) or getattr(env, "agents", None) or [])
    if not agents:
        raise ValueError(f"multi-agent env {name!r} lists no agents: set possible_agents in its __init__")
    spaces = {}
    for agent_id in agents:
        try:
            spaces[agent_id] = (env.get_observation_space(agent_id), env.get_action_space(agent_id))
        except KeyError as exc:
            raise ValueError(f"multi-agent env {name!r}: {exc.args[0]}") from None
    return spaces


def call_env(name: str, what: str, call, where: str = ""):
    """Run ``call`` (a user env's method); an exception keeps its type and gains a note saying whose."""
    try:
        return call()
    except Exception as exc:
        exc.add_note(f"raised by env {name!r}{where} while {what}")
        raise


# ---- observations ----------------------------------------------------------------------------------


def obs_size(space) -> int:
    """Length of the flat float vector an observation of ``space`` becomes."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    raise ValueError(f"observation space {space} is not supported: use a Box or a Discrete space")


class ObsFlattener:
    """Turns a batch of raw observations into a float32 [N, obs_size] array (one-hot for Discrete)."""

    def __init__(self, space):
        import gymnasium as gym

        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.n = obs_size(space)
        self.start = int(getattr(space, "start", 0)) if self.discrete else 0

    def __call__(self, observations) -> np.ndarray:
        if self.discrete:
            out = np.zeros((len(observations), self.n), np.float32)
            out[np.arange(len(observations)), np.asarray(observations, np.int64) - self.start] = 1.0
            return out
        return np.asarray(observations, np.float32).reshape(len(observations), self.n)


# ---- several envs in one process -------------------------------------------------------------------


class VectorEnv:
    """``num_envs`` copies of one env stepped together, reset as soon as an episode ends.

    Keeps each env's running episode return and length and, once an episode ends, its totals
    (``pop_episodes``), so episode metrics need no per-step bookkeeping by the caller.
    """

    def __init__(self, spec: EnvSpec, env_config: dict, num_envs: int, worker_index: int = 0, num_workers: int = 0):
        self.name = spec.name
        self.worker_index = worker_index
        self.envs = []
        for i in range(num_envs):
            context = EnvContext(env_config, worker_index, i, num_workers)
            self.envs.append(call_env(self.name, "creating", lambda c=context: spec.creator(c), self._where(i)))
        self.flatten = ObsFlattener(spec.observation_space)
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, np.int64)
        self.finished: list = []  # (return, length) of episodes ended since the last pop
        self.obs = None

    def _where(self, i: int) -> str:
        return f" (env runner {self.worker_index}, sub-env {i})"

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        raw = []
        for i, env in enumerate(self.envs):
            env_seed = None if seed is None else seed + i
            raw.append(call_env(self.name, "resetting", lambda e=env, s=env_seed: e.reset(seed=s)[0], self._where(i)))
        self.obs = self.flatten(raw)
        self.returns[:] = 0
        self.lengths[:] = 0
        return self.obs

    def step(self, actions) -> tuple:
        """Step every env; returns (next obs after autoreset, rewards, terminateds, truncateds,
        the true next obs: the final one where an episode ended)."""
        n = self.num_envs
        rewards = np.zeros(n, np.float32)
        terminateds = np.zeros(n, bool)
        truncateds = np.zeros(n, bool)
        next_raw, final_raw = [], []
        for i, env in enumerate(self.envs):
            action = actions[i]
            obs, reward, terminated, truncated, _ = call_env(
                self.name, "stepping", lambda e=env, a=action: e.step(a), self._where(i)
            )
            rewards[i], terminateds[i], truncateds[i] = reward, terminated, truncated
            final_raw.append(obs)
            if terminated or truncated:
                obs = call_env(self.name, "resetting", lambda e=env: e.reset()[0], self._where(i))
            next_raw.append(obs)
        self.returns += rewards
        self.lengths += 1
        for i in np.flatnonzero(terminateds | truncateds):
            self.finished.append((float(self.returns[i]), int(self.lengths[i])))
            self.returns[i] = 0
            self.lengths[i] = 0
        final = self.flatten(final_raw)
        self.obs = self.flatten(next_raw)
        return self.obs, rewards, terminateds, truncateds, final

    def pop_episodes(self) -> list:
        done, self.finished = self.finished, []
        return done

    def close(self) -> None:
        for env in self.envs:
            close = getattr(env, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass  # closing is best effort: the runner is going away
