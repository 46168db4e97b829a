"""``MultiAgentEnv``: RLlib's multi-agent environment API.

An env with several agents returns dicts keyed by agent id: ``reset()`` gives ``(obs, infos)`` for
the agents that act first; ``step(action_dict)`` takes one action per agent that had an observation
and gives ``(obs, rewards, terminateds, truncateds, infos)``. ``terminateds["__all__"]`` /
``truncateds["__all__"]`` end the episode for every agent. Each agent has its own spaces
(``observation_spaces`` / ``action_spaces``, dicts by agent id).
"""


class MultiAgentEnv:
    """Base class of multi-agent environments (subclass it; set ``possible_agents`` and the spaces).

    Subclasses set, usually in ``__init__``:
    - ``possible_agents``: every agent id that may ever act;
    - ``observation_spaces`` / ``action_spaces``: {agent_id: gymnasium space};
    - ``agents``: the ids acting now (defaults to ``possible_agents``).
    """

    possible_agents: list = []
    observation_spaces: dict | None = None
    action_spaces: dict | None = None

    def __init__(self):
        if not hasattr(self, "agents"):
            self.agents = list(self.possible_agents)

    def reset(self, *, seed=None, options=None) -> tuple:
        """Start an episode; returns ({agent_id: obs}, {agent_id: info})."""
        raise NotImplementedError

    def step(self, action_dict: dict) -> tuple:
        """Apply ``{agent_id: action}``; returns obs, rewards, terminateds, truncateds, infos, each a
        dict by agent id, the last two also with the ``"__all__"`` key."""
        raise NotImplementedError

    def get_observation_space(self, agent_id):
        """The observation space of ``agent_id``."""
        if not self.observation_spaces or agent_id not in self.observation_spaces:
            raise KeyError(f"{type(self).__name__} has no observation space for agent {agent_id!r}")
        return self.observation_spaces[agent_id]

    def get_action_space(self, agent_id):
        """The action space of ``agent_id``."""
        if not self.action_spaces or agent_id not in self.action_spaces:
            raise KeyError(f"{type(self).__name__} has no action space for agent {agent_id!r}")
        return self.action_spaces[agent_id]

    @property
    def num_agents(self) -> int:
        return len(self.agents)

    @property
    def max_num_agents(self) -> int:
        return len(self.possible_agents)

    def render(self):
        return None

    def close(self) -> None:
        pass
