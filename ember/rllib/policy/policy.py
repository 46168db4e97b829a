"""RLlib's import path of ``PolicySpec`` (``from ray.rllib.policy.policy import PolicySpec``)."""

from dataclasses import dataclass, field


@dataclass
class PolicySpec:
    """One policy of ``config.multi_agent(policies={...})``: its spaces (None: those of the agents
    mapped to it) and config overrides (not supported yet: every module shares the algorithm's)."""

    policy_class: object = None
    observation_space: object = None
    action_space: object = None
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.config:
            raise NotImplementedError("PolicySpec(config=...): per-policy settings are not supported yet")
