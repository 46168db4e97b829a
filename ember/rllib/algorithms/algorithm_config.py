"""``AlgorithmConfig``: RLlib's builder of an algorithm's settings (new API stack names).

Every builder method takes keyword arguments only, sets those that were given and returns the
config, so calls chain (``PPOConfig().environment("CartPole-v1").training(lr=3e-4)``). Values are
checked in ``validate()``, which ``build_algo()`` runs: a bad value, an unknown environment id or
a space the algorithm cannot handle is reported there, before any actor starts.
"""

import copy
import math
from dataclasses import dataclass, field, fields


class _NotProvided:
    """Marks a builder argument the caller did not pass (None is a meaningful value for some)."""

    def __repr__(self):
        return "NotProvided"


NotProvided = _NotProvided()

ACTIVATIONS = ("tanh", "relu", "swish", "silu", "linear", None)


@dataclass
class DefaultModelConfig:
    """The default fully connected RLModule's shape, as RLlib's ``DefaultModelConfig``.

    ``fcnet_hiddens``/``fcnet_activation`` make the encoder; ``head_fcnet_hiddens`` the layers of
    each head (policy, value, Q) before its output layer; ``vf_share_layers`` whether the value
    function shares the policy's encoder.
    """

    fcnet_hiddens: list = field(default_factory=lambda: [256, 256])
    fcnet_activation: str = "tanh"
    head_fcnet_hiddens: list = field(default_factory=list)
    head_fcnet_activation: str = "relu"
    vf_share_layers: bool = True
    free_log_std: bool = False
    log_std_clip_param: float = 20.0
    use_lstm: bool = False
    conv_filters: list | None = None

    @classmethod
    def from_any(cls, value) -> "DefaultModelConfig":
        """A DefaultModelConfig from one, from a dict of its fields, or the default for None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return copy.deepcopy(value)
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"model_config: unknown keys {unknown}; the supported keys are {sorted(known)}")
            return cls(**copy.deepcopy(value))
        raise TypeError(f"model_config must be a DefaultModelConfig or a dict, got {type(value).__name__}")

    def validate(self) -> None:
        for name in ("fcnet_hiddens", "head_fcnet_hiddens"):
            sizes = getattr(self, name)
            if not isinstance(sizes, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes
            ):
                raise ValueError(f"model_config.{name} must be a list of positive ints, got {sizes!r}")
        for name in ("fcnet_activation", "head_fcnet_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"model_config.{name}={getattr(self, name)!r}: use one of {list(ACTIVATIONS)}")
        if self.use_lstm:
            raise NotImplementedError("model_config.use_lstm: recurrent modules are not supported yet")
        if self.conv_filters:
            raise NotImplementedError("model_config.conv_filters: convolutional encoders are not supported yet")


class AlgorithmConfig:
    """Settings of an RL algorithm, built with chained method calls; ``build_algo()`` makes the Algorithm."""

    algo_class = None  # set by each algorithm's config

    def __init__(self, algo_class=None):
        if algo_class is not None:
            self.algo_class = algo_class
        # environment
        self.env = None
        self.env_config: dict = {}
        self.observation_space = None
        self.action_space = None
        self.disable_env_checking = False
        # env runners
        self.num_env_runners = 0
        self.num_envs_per_env_runner = 1
        self.rollout_fragment_length = "auto"
        self.num_cpus_per_env_runner = 1
        self.explore = True
        self.batch_mode = "truncate_episodes"
        # multi-agent
        self.policies = None  # None: one module, "default_policy"
        self.policy_mapping_fn = None
        self.policies_to_train = None
        self.is_multi_agent = False
        self.module_spaces: dict = {}  # module id -> (observation space, action space), set by validate()
        # learners
        self.num_learners = 0
        self.num_cpus_per_learner = "auto"
        self.num_gpus_per_learner = 0
        # training (common)
        self.gamma = 0.99
        self.lr = 0.001
        self.train_batch_size_per_learner = 32
        self.grad_clip = None
        self.grad_clip_by = "global_norm"
        # framework and module
        self.framework_str = "torch"
        self.model_config = DefaultModelConfig()
        # evaluation
        self.evaluation_interval = None
        self.evaluation_duration = 10
        self.evaluation_duration_unit = "episodes"
        self.evaluation_num_env_runners = 0
        self.evaluation_config: dict = {}
        # fault tolerance
        self.restart_failed_env_runners = True
        self.max_num_env_runner_restarts = 1000
        # reporting and debugging
        self.metrics_num_episodes_for_smoothing = 100
        self.min_sample_timesteps_per_iteration = 0
        self.progress = True  # Ember's: a live widget in a notebook, a line per iteration elsewhere
        self.seed = None
        self.log_level = "WARN"

    # ---- builder methods (RLlib's names) ------------------------------------------------------

    def _set(self, **values):
        for name, value in values.items():
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    def environment(
        self,
        env=NotProvided,
        *,
        env_config=NotProvided,
        observation_space=NotProvided,
        action_space=NotProvided,
        disable_env_checking=NotProvided,
    ):
        """The environment: a registered name, a gymnasium id or an env class; ``env_config`` is
        passed to the creator (as keyword arguments to ``gymnasium.make`` for an id)."""
        if env_config is not NotProvided and not isinstance(env_config, dict):
            raise TypeError(f"env_config must be a dict, got {type(env_config).__name__}")
        return self._set(
            env=env,
            env_config=dict(env_config) if env_config is not NotProvided else NotProvided,
            observation_space=observation_space,
            action_space=action_space,
            disable_env_checking=disable_env_checking,
        )

    def env_runners(
        self,
        *,
        num_env_runners=NotProvided,
        num_envs_per_env_runner=NotProvided,
        rollout_fragment_length=NotProvided,
        num_cpus_per_env_runner=NotProvided,
        explore=NotProvided,
        batch_mode=NotProvided,
    ):
        """How sampling runs: ``num_env_runners`` actors (0: in the driver), each stepping
        ``num_envs_per_env_runner`` environments ``rollout_fragment_length`` steps per call."""
        return self._set(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            rollout_fragment_length=rollout_fragment_length,
            num_cpus_per_env_runner=num_cpus_per_env_runner,
            explore=explore,
            batch_mode=batch_mode,
        )

    def learners(self, *, num_learners=NotProvided, num_cpus_per_learner=NotProvided, num_gpus_per_learner=NotProvided):
        """How many learner actors update the modules: 0 (RLlib's default) updates them in the driver;
        N >= 1 starts N learner actors joined in one torch.distributed group (DDP), each training on
        ``train_batch_size_per_learner`` steps of every iteration's batch. ``num_cpus_per_learner``
        ("auto": 1 without a GPU, else 0) and ``num_gpus_per_learner`` are each actor's resources."""
        return self._set(
            num_learners=num_learners,
            num_cpus_per_learner=num_cpus_per_learner,
            num_gpus_per_learner=num_gpus_per_learner,
        )

    def training(
        self,
        *,
        gamma=NotProvided,
        lr=NotProvided,
        train_batch_size_per_learner=NotProvided,
        grad_clip=NotProvided,
        grad_clip_by=NotProvided,
    ):
        """Settings of the update; each algorithm's config adds its own."""
        return self._set(
            gamma=gamma,
            lr=lr,
            train_batch_size_per_learner=train_batch_size_per_learner,
            grad_clip=grad_clip,
            grad_clip_by=grad_clip_by,
        )

    def framework(self, framework=NotProvided, **_ignored):
        """The deep-learning framework: only "torch" here (RLlib's new stack is torch-first too)."""
        return self._set(framework_str=framework)

    def api_stack(self, enable_rl_module_and_learner=NotProvided, enable_env_runner_and_connector_v2=NotProvided):
        """Only RLlib's new API stack exists here; turning it off is refused."""
        if False in (enable_rl_module_and_learner, enable_env_runner_and_connector_v2):
            raise ValueError("ember.rllib implements RLlib's new API stack only; the old stack cannot be enabled")
        return self

    def rl_module(self, *, model_config=NotProvided, rl_module_spec=NotProvided):
        """The default module's shape (``model_config``: a DefaultModelConfig or a dict of its fields)."""
        if rl_module_spec is not NotProvided and rl_module_spec is not None:
            raise NotImplementedError("rl_module(rl_module_spec=...): custom RLModules are not supported yet")
        if model_config is not NotProvided:
            self.model_config = DefaultModelConfig.from_any(model_config)
        return self

    def multi_agent(
        self, *, policies=NotProvided, policy_mapping_fn=NotProvided, policies_to_train=NotProvided, **_ignored
    ):
        """Modules for a MultiAgentEnv: ``policies`` (a set of module ids, or a dict of id to None or a
        PolicySpec with spaces), ``policy_mapping_fn(agent_id, episode, **kwargs) -> module id``, and
        ``policies_to_train`` (ids, or ``fn(module_id, batch) -> bool``; None: all)."""
        if policy_mapping_fn is not NotProvided and policy_mapping_fn is not None and not callable(policy_mapping_fn):
            raise TypeError(f"policy_mapping_fn must be callable, got {type(policy_mapping_fn).__name__}")
        return self._set(policies=policies, policy_mapping_fn=policy_mapping_fn, policies_to_train=policies_to_train)

    def evaluation(
        self,
        *,
        evaluation_interval=NotProvided,
        evaluation_duration=NotProvided,
        evaluation_duration_unit=NotProvided,
        evaluation_num_env_runners=NotProvided,
        evaluation_config=NotProvided,
    ):
        """Evaluation every ``evaluation_interval`` iterations (None: only on ``algo.evaluate()``),
        for ``evaluation_duration`` episodes (or timesteps), acting greedily unless
        ``evaluation_config={"explore": True}``."""
        return self._set(
            evaluation_interval=evaluation_interval,
            evaluation_duration=evaluation_duration,
            evaluation_duration_unit=evaluation_duration_unit,
            evaluation_num_env_runners=evaluation_num_env_runners,
            evaluation_config=evaluation_config,
        )

    def fault_tolerance(self, *, restart_failed_env_runners=NotProvided, max_num_env_runner_restarts=NotProvided):
        """Whether an env runner that dies (crash, SIGKILL, node loss) is replaced and its work redone."""
        return self._set(
            restart_failed_env_runners=restart_failed_env_runners,
            max_num_env_runner_restarts=max_num_env_runner_restarts,
        )

    def reporting(
        self,
        *,
        metrics_num_episodes_for_smoothing=NotProvided,
        min_sample_timesteps_per_iteration=NotProvided,
        progress=NotProvided,
    ):
        """Metrics: episode stats are means over the last ``metrics_num_episodes_for_smoothing``
        episodes. ``progress=False`` (Ember's) turns off the live widget / per-iteration line."""
        return self._set(
            metrics_num_episodes_for_smoothing=metrics_num_episodes_for_smoothing,
            min_sample_timesteps_per_iteration=min_sample_timesteps_per_iteration,
            progress=progress,
        )

    def debugging(self, *, seed=NotProvided, log_level=NotProvided, logger_config=NotProvided):
        """``seed`` makes sampling (env resets, action draws) and the module's initial weights repeatable."""
        return self._set(seed=seed, log_level=log_level)

    def resources(self, **_ignored):
        """Accepted for old scripts; resources are set per env runner / learner here."""
        return self

    # ---- copying and building ------------------------------------------------------------------

    def copy(self, copy_frozen=None):
        """A deep copy (the env creator and classes are shared, not copied)."""
        env, self.env = self.env, None
        try:
            clone = copy.deepcopy(self)
        finally:
            self.env = env
        clone.env = env
        return clone

    def to_dict(self) -> dict:
        """The settings as a plain dict (RLlib's names)."""
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out["model_config"] = copy.deepcopy(vars(self.model_config))
        out["framework"] = out.pop("framework_str")
        return out

    def update_from_dict(self, values: dict):
        """Set settings from a dict of RLlib names (as Tune's param_space does)."""
        for name, value in values.items():
            if name == "model_config":
                self.model_config = DefaultModelConfig.from_any(value)
            elif name == "framework":
                self.framework_str = value
            elif name in vars(self):
                setattr(self, name, value)
            else:
                raise ValueError(f"{type(self).__name__} has no setting {name!r}")
        return self

    def build_algo(self, env=None):
        """Validate a copy of this config and build its Algorithm (starting its env runners)."""
        config = self.copy()
        if env is not None:
            config.env = env
        config.validate()
        if config.algo_class is None:
            raise ValueError("this AlgorithmConfig names no algorithm; use PPOConfig(), DQNConfig(), ...")
        return config.algo_class(config)

    build = build_algo  # RLlib's older name, still common in scripts

    # ---- validation ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise a ValueError/TypeError naming the first bad setting; resolves the environment."""
        from ember.rllib.env.env_factory import resolve_env

        if self.framework_str != "torch":
            raise ValueError(f"framework={self.framework_str!r}: ember.rllib supports 'torch' only")
        _int_at_least("num_env_runners", self.num_env_runners, 0)
        _int_at_least("num_envs_per_env_runner", self.num_envs_per_env_runner, 1)
        _int_at_least("num_learners", self.num_learners, 0)
        if self.num_cpus_per_learner != "auto":
            _number_in("num_cpus_per_learner", self.num_cpus_per_learner, 0, math.inf)
        _number_in("num_gpus_per_learner", self.num_gpus_per_learner, 0, math.inf)
        if self.num_learners and not self.learner_resources():
            raise ValueError("num_cpus_per_learner and num_gpus_per_learner are both 0: a learner actor needs some")
        if self.rollout_fragment_length != "auto":
            _int_at_least("rollout_fragment_length", self.rollout_fragment_length, 1)
        if self.batch_mode == "complete_episodes":
            raise NotImplementedError("batch_mode='complete_episodes' is not supported yet")
        if self.batch_mode != "truncate_episodes":
            raise ValueError(f"batch_mode={self.batch_mode!r}: use 'truncate_episodes'")
        _number_in("num_cpus_per_env_runner", self.num_cpus_per_env_runner, 0, math.inf)
        _number_in("gamma", self.gamma, 0.0, 1.0)
        _number_in("lr", self.lr, 0.0, math.inf, open_low=True)
        _int_at_least("train_batch_size_per_learner", self.train_batch_size_per_learner, 1)
        if self.grad_clip is not None:
            _number_in("grad_clip", self.grad_clip, 0.0, math.inf, open_low=True)
        if self.grad_clip_by not in ("global_norm", "norm", "value"):
            raise ValueError(f"grad_clip_by={self.grad_clip_by!r}: use 'global_norm', 'norm' or 'value'")
        if self.evaluation_interval is not None:
            _int_at_least("evaluation_interval", self.evaluation_interval, 1)
        _int_at_least("evaluation_duration", self.evaluation_duration, 1)
        if self.evaluation_duration_unit not in ("episodes", "timesteps"):
            raise ValueError(f"evaluation_duration_unit={self.evaluation_duration_unit!r}: 'episodes' or 'timesteps'")
        _int_at_least("evaluation_num_env_runners", self.evaluation_num_env_runners, 0)
        if not isinstance(self.evaluation_config, dict):
            raise TypeError("evaluation_config must be a dict")
        _int_at_least("max_num_env_runner_restarts", self.max_num_env_runner_restarts, 0)
        _int_at_least("metrics_num_episodes_for_smoothing", self.metrics_num_episodes_for_smoothing, 1)
        if self.seed is not None:
            _int_at_least("seed", self.seed, 0)
        self.model_config.validate()
        if self.env is None:
            raise ValueError("no environment: call config.environment(env=...) with a gymnasium id, a class or a name")
        spec = resolve_env(self.env, self.env_config)
        if spec.multi_agent is not None:
            self.is_multi_agent = True
            self.module_spaces = self.resolve_modules(spec.name, spec.multi_agent.agent_spaces)
            for obs_space, act_space in self.module_spaces.values():
                self.validate_spaces(obs_space, act_space)
            return
        if self.policies is not None and set(_policy_dict(self.policies)) != {DEFAULT_MODULE_ID}:
            raise ValueError(f"multi_agent(policies=...) needs a MultiAgentEnv; {spec.name!r} is a single-agent env")
        if self.observation_space is None:
            self.observation_space = spec.observation_space
        if self.action_space is None:
            self.action_space = spec.action_space
        self.validate_spaces(self.observation_space, self.action_space)

    def validate_spaces(self, observation_space, action_space) -> None:
        """Each algorithm says which spaces it handles."""

    def resolve_modules(self, env_name: str, agent_spaces: dict) -> dict:
        """{module id: (obs space, action space)}: each module's spaces from a PolicySpec or from the
        agents mapped to it; an unknown module id from the mapping or mismatched spaces raise here."""
        from ember.rllib.env.multi_agent_env_runner import EpisodeRef, map_agent

        policies = _policy_dict(self.policies if self.policies is not None else {DEFAULT_MODULE_ID})
        if not policies:
            raise ValueError("multi_agent(policies=...) is empty")
        if self.policy_mapping_fn is None:
            self.policy_mapping_fn = default_policy_mapping_fn
        spaces = {
            mid: (getattr(spec, "observation_space", None), getattr(spec, "action_space", None))
            for mid, spec in policies.items()
        }
        from_agent: dict = {}
        for agent_id, agent_space in agent_spaces.items():
            mid = map_agent(self.policy_mapping_fn, agent_id, EpisodeRef("build-check", 0), policies)
            for k, what in enumerate(("observation", "action")):
                if spaces[mid][k] is None:
                    spaces[mid] = tuple(agent_space[j] if j == k else spaces[mid][j] for j in range(2))
                    from_agent[(mid, k)] = agent_id
                elif spaces[mid][k] != agent_space[k]:
                    other = from_agent.get((mid, k))
                    whose = f"agent {other!r}'s" if other is not None else "the PolicySpec's"
                    raise ValueError(
                        f"env {env_name!r}: agent {agent_id!r} maps to policy {mid!r} but its {what} space "
                        f"{agent_space[k]} differs from {whose} {spaces[mid][k]}"
                    )
        missing = sorted(str(mid) for mid, pair in spaces.items() if None in pair)
        if missing:
            raise ValueError(
                f"policies {missing}: no agent of {env_name!r} maps to them and no PolicySpec gives their spaces"
            )
        to_train = self.policies_to_train
        if to_train is not None and not callable(to_train):
            unknown = sorted(str(m) for m in set(to_train) - set(spaces))
            if unknown:
                raise ValueError(f"policies_to_train names unknown policies {unknown}; policies are {sorted(spaces)}")
        return spaces

    def module_is_trained(self, module_id) -> bool:
        """Whether ``policies_to_train`` lets ``module_id`` learn (None: every module does)."""
        if self.policies_to_train is None:
            return True
        if callable(self.policies_to_train):
            return bool(self.policies_to_train(module_id, None))
        return module_id in self.policies_to_train

    @property
    def total_train_batch_size(self) -> int:
        """Env steps per iteration's train batch: ``train_batch_size_per_learner`` for each learner
        (one when the learner runs in the driver)."""
        return self.train_batch_size_per_learner * max(1, self.num_learners)

    def learner_resources(self) -> dict:
        """One learner actor's resources ({"CPU": ..., "GPU": ...}, zero amounts left out)."""
        cpus = self.num_cpus_per_learner
        if cpus == "auto":
            cpus = 0 if self.num_gpus_per_learner else 1
        return {name: float(n) for name, n in (("CPU", cpus), ("GPU", self.num_gpus_per_learner)) if n}

    def get_rollout_fragment_length(self) -> int:
        """Steps per env per sample call: "auto" splits one train batch over the runners' envs."""
        if self.rollout_fragment_length != "auto":
            return self.rollout_fragment_length
        envs = max(1, self.num_env_runners) * self.num_envs_per_env_runner
        return max(1, math.ceil(self.total_train_batch_size / envs))

    def __repr__(self):
        return f"{type(self).__name__}(env={self.env!r})"


DEFAULT_MODULE_ID = "default_policy"


def default_policy_mapping_fn(agent_id, episode=None, **kwargs) -> str:
    """RLlib's default: every agent acts with the one module, "default_policy"."""
    return DEFAULT_MODULE_ID


def _policy_dict(policies) -> dict:
    if isinstance(policies, dict):
        return dict(policies)
    if isinstance(policies, (set, frozenset, list, tuple)):
        return {mid: None for mid in policies}
    raise TypeError(
        f"policies must be a set of module ids or a dict of id to PolicySpec, got {type(policies).__name__}"
    )


def _int_at_least(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _number_in(name: str, value, low: float, high: float, open_low: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or value < low or value > high or (open_low and value == low):
        bound = f"> {low}" if open_low else f">= {low}"
        upper = f" and <= {high}" if high != math.inf else ""
        raise ValueError(f"{name} must be {bound}{upper}, got {value}")


def check_number(name: str, value, low: float, high: float = math.inf, open_low: bool = False) -> None:
    """For the algorithms' own settings: a TypeError/ValueError naming ``name`` unless low <= value <= high."""
    _number_in(name, value, low, high, open_low)


def check_int(name: str, value, low: int) -> None:
    _int_at_least(name, value, low)
