"""``EnvRunnerGroup``: the env runner actors of an algorithm, and replacing the ones that die.

Sampling is one round of actor calls per iteration: the policy is put in the object store once
and every runner's ``sample`` gets the same ref. A runner whose process dies (a crash, a SIGKILL, its
node gone) is replaced by a fresh actor with the same index and its call is sent again, so the
iteration completes (RLlib's ``restart_failed_env_runners``). An exception raised by the user's env
is not a death: it reaches the caller as the user's exception type, with its traceback and a note
naming the env.
"""

import ember
from ember.exceptions import ActorDiedError, ActorUnavailableError, WorkerCrashedError
from ember.rllib.env.env_runner import EnvRunner
from ember.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

RUNNER_DEATHS = (ActorDiedError, ActorUnavailableError, WorkerCrashedError)


class EnvRunnerGroup:
    """``num_env_runners`` actors, or one runner in this process when it is 0."""

    def __init__(self, spec, config, num_env_runners: int, seed_offset: int = 0):
        self.spec = spec
        self.env_config = dict(config.env_config)
        self.num_envs = config.num_envs_per_env_runner
        self.num_cpus = config.num_cpus_per_env_runner
        self.restart = config.restart_failed_env_runners
        self.max_restarts = config.max_num_env_runner_restarts
        self.seed = None if config.seed is None else config.seed + seed_offset
        self.num_env_runners = num_env_runners
        self.num_restarts = 0
        self.fresh: set = set()  # positions whose replacement has not completed a call yet
        self.local = None
        self.actors: list = []
        runner_class = MultiAgentEnvRunner if spec.multi_agent is not None else EnvRunner
        if num_env_runners == 0:
            self.local = runner_class(spec, self.env_config, self.num_envs, 0, 0, self.seed)
        else:
            self._actor_class = ember.remote(runner_class)
            self.actors = [self._make(index) for index in range(1, num_env_runners + 1)]

    def _make(self, index: int):
        return self._actor_class.options(num_cpus=self.num_cpus).remote(
            self.spec, self.env_config, self.num_envs, index, self.num_env_runners, self.seed
        )

    def _replace(self, position: int, error: Exception) -> None:
        if not self.restart:
            raise error
        if position in self.fresh:
            # A replacement that dies before completing a call would die again (its env cannot be
            # made on that worker, say): restarting it up to max_num_env_runner_restarts times hides that.
            raise RuntimeError(f"env runner {position + 1} died again right after being replaced: {error}") from error
        if self.num_restarts >= self.max_restarts:
            raise RuntimeError(
                f"env runner {position + 1} died and max_num_env_runner_restarts={self.max_restarts} is used up"
            ) from error
        self.num_restarts += 1
        try:
            ember.kill(self.actors[position])
        except Exception:
            pass  # already gone: that is why it is being replaced
        self.actors[position] = self._make(position + 1)
        self.fresh.add(position)

    def call_all(self, method: str, *args, **kwargs) -> list:
        """Call ``method`` on every runner and return the results in runner order, replacing
        runners that die and calling the replacements again."""
        if self.local is not None:
            return [getattr(self.local, method)(*args, **kwargs)]
        refs = [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]
        results: list = [None] * len(refs)
        pending = list(range(len(refs)))
        while pending:
            retry = []
            for position in pending:
                try:
                    results[position] = ember.get(refs[position])
                    self.fresh.discard(position)
                except RUNNER_DEATHS as error:
                    self._replace(position, error)
                    refs[position] = getattr(self.actors[position], method).remote(*args, **kwargs)
                    retry.append(position)
            pending = retry
        return results

    def sample(self, policy, num_steps: int, explore: bool = True) -> list:
        """One batch per runner (see ``EnvRunner.sample``); the policy is broadcast once."""
        policy_ref = policy if self.local is not None else ember.put(policy)
        return self.call_all("sample", policy_ref, num_steps, explore)

    def evaluate(self, policy, duration: int, unit: str, explore: bool) -> list:
        runners = max(1, len(self.actors))
        share = -(-duration // runners)  # ceil: every runner takes its share of the episodes
        policy_ref = policy if self.local is not None else ember.put(policy)
        return self.call_all("evaluate", policy_ref, share, unit, explore)

    def foreach_env_runner(self, func) -> list:
        """``func(runner)`` on every runner (in its process); the results in runner order."""
        return self.call_all("apply", func)

    def num_healthy_env_runners(self) -> int:
        return len(self.actors) if self.actors else 1

    def stop(self) -> None:
        """Stop the envs and kill the runner actors (their processes end)."""
        if self.local is not None:
            self.local.stop()
            return
        for actor in self.actors:
            try:
                ember.kill(actor)
            except Exception:
                pass  # dead already, or the cluster is shutting down
        self.actors = []
