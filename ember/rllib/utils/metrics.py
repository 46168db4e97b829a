"""Names of the result dict's keys (RLlib's ``ray.rllib.utils.metrics`` constants) and the dict itself."""

from ember.util.nested import NestedResult, flatten

ENV_RUNNER_RESULTS = "env_runners"
EVALUATION_RESULTS = "evaluation"
LEARNER_RESULTS = "learners"
FAULT_TOLERANCE_STATS = "fault_tolerance"
TIMERS = "timers"
ALL_MODULES = "__all_modules__"
DEFAULT_MODULE_ID = "default_policy"
EPISODE_RETURN_MEAN = "episode_return_mean"
EPISODE_RETURN_MIN = "episode_return_min"
EPISODE_RETURN_MAX = "episode_return_max"
EPISODE_LEN_MEAN = "episode_len_mean"
NUM_EPISODES = "num_episodes"
NUM_EPISODES_LIFETIME = "num_episodes_lifetime"
NUM_ENV_STEPS_SAMPLED = "num_env_steps_sampled"
NUM_ENV_STEPS_SAMPLED_LIFETIME = "num_env_steps_sampled_lifetime"
NUM_ENV_STEPS_TRAINED = "num_env_steps_trained"
NUM_ENV_STEPS_TRAINED_LIFETIME = "num_env_steps_trained_lifetime"
ENV_RUNNER_SAMPLING_TIMER = "env_runner_sampling_timer"
LEARNER_UPDATE_TIMER = "learner_update_timer"
SYNCH_WORKER_WEIGHTS_TIMER = "synch_weights"


class ResultDict(NestedResult):
    """A nested result dict, as RLlib's, that also answers Tune's flattened keys:
    ``result["env_runners/episode_return_mean"]`` is ``result["env_runners"]["episode_return_mean"]``."""

    def flatten(self) -> dict:
        """Every leaf under its slash-joined path (``{"env_runners/episode_return_mean": ...}``)."""
        return flatten(self)
