"""The controller's decisions, apart from any I/O: desired replicas in, actions out.

The controller actor feeds this state machine events (a deployment's target changed, a replica
started, failed to start, died, passed or failed a health check, stopped) and carries out the
actions ``step()`` returns (start a replica, stop one, check one's health). It never waits on
anything, so tests drive it with plain calls and a fake clock.

Rolling update: replicas of a new version start while the old ones keep serving; an old replica
is stopped only when a new one is running in its place, and at most ``max(1, 20%)`` replicas above
the target run at once.
"""

import dataclasses
import math
from typing import NamedTuple

STARTING, RUNNING, STOPPING = "STARTING", "RUNNING", "STOPPING"
UPDATING, HEALTHY, UNHEALTHY, DEPLOY_FAILED = "UPDATING", "HEALTHY", "UNHEALTHY", "DEPLOY_FAILED"
UPSCALING, DOWNSCALING = "UPSCALING", "DOWNSCALING"
MAX_START_FAILURES = 3


class Start(NamedTuple):
    deployment: str
    replica_id: str
    version: str


class Stop(NamedTuple):
    deployment: str
    replica_id: str
    graceful: bool


class CheckHealth(NamedTuple):
    deployment: str
    replica_id: str


@dataclasses.dataclass
class Replica:
    replica_id: str
    version: str
    state: str = STARTING
    last_check: float = 0.0
    check_pending: bool = False


@dataclasses.dataclass
class Target:
    version: str
    num_replicas: int
    health_check_period_s: float = 10.0
    removed: bool = False
    failures: int = 0
    failed_message: str = ""
    trigger: str = "CONFIG_UPDATE_STARTED"
    scaling: str = ""  # UPSCALING / DOWNSCALING while an autoscaling decision is carried out
    lost: bool = False  # a replica failed after the deployment had been healthy
    replicas: dict = dataclasses.field(default_factory=dict)


class Reconciler:
    """Desired versus running replicas of every deployment (keyed ``"app#deployment"``)."""

    def __init__(self):
        self.targets: dict[str, Target] = {}
        self._next_id = 0
        self._owner: dict[str, str] = {}  # replica id -> deployment
        self._pending_stops: list = []  # replicas a failed health check condemned, stopped at the next step

    # --- events ------------------------------------------------------------------------------------
    def set_target(self, deployment: str, version: str, num_replicas: int, health_check_period_s: float = 10.0):
        """Deploy (or redeploy) ``deployment`` at ``version`` with ``num_replicas`` replicas."""
        if not isinstance(num_replicas, int) or num_replicas < 0:
            raise ValueError(f"num_replicas must be a non-negative int, got {num_replicas!r}.")
        target = self.targets.get(deployment)
        if target is None or target.removed:
            replicas = target.replicas if target is not None else {}
            self.targets[deployment] = Target(version, num_replicas, health_check_period_s, replicas=replicas)
            return
        if target.version != version:
            target.failures, target.failed_message, target.trigger = 0, "", "CONFIG_UPDATE_STARTED"
            target.lost = False
        target.version = version
        target.health_check_period_s = health_check_period_s
        self.set_num_replicas(deployment, num_replicas, autoscaling=False)

    def set_num_replicas(self, deployment: str, num_replicas: int, autoscaling: bool = True):
        target = self.targets[deployment]
        if num_replicas != target.num_replicas and autoscaling:
            target.scaling = UPSCALING if num_replicas > target.num_replicas else DOWNSCALING
            target.trigger = "AUTOSCALING"
        target.num_replicas = num_replicas

    def remove(self, deployment: str):
        """Stop every replica of ``deployment``; it is forgotten once they have all stopped."""
        if deployment in self.targets:
            self.targets[deployment].removed = True

    def started(self, replica_id: str, now: float):
        replica = self._replica(replica_id)
        if replica is not None and replica.state == STARTING:
            replica.state, replica.last_check = RUNNING, now
            self.targets[self._owner[replica_id]].failures = 0

    def start_failed(self, replica_id: str, error: str):
        replica = self._replica(replica_id)
        if replica is None:
            return
        target = self.targets[self._owner[replica_id]]
        self._forget(replica_id)
        if replica.version == target.version and replica.state == STARTING:
            target.failures += 1
            if target.failures >= MAX_START_FAILURES:
                target.failed_message = (
                    f"The deployment failed to start {target.failures} times in a row; the last error: {error}"
                )

    def died(self, replica_id: str, reason: str = ""):
        """A replica's process is gone (killed, crashed, or its node died)."""
        replica = self._replica(replica_id)
        if replica is None:
            return
        if replica.state == STARTING:
            return self.start_failed(replica_id, reason or "the replica died while starting")
        target = self.targets[self._owner[replica_id]]
        if replica.state == RUNNING and not target.removed:
            target.lost, target.trigger = True, "HEALTH_CHECK_FAILED"
        self._forget(replica_id)

    def health(self, replica_id: str, ok: bool, now: float):
        replica = self._replica(replica_id)
        if replica is None or replica.state != RUNNING:
            return
        replica.check_pending, replica.last_check = False, now
        if not ok:
            target = self.targets[self._owner[replica_id]]
            target.lost, target.trigger = True, "HEALTH_CHECK_FAILED"
            replica.state = STOPPING
            # Graceful all the same: it may still answer, and routers need a moment to stop using it.
            self._pending_stops.append(Stop(self._owner[replica_id], replica_id, True))

    def stopped(self, replica_id: str):
        if self._replica(replica_id) is not None:
            self._forget(replica_id)

    # --- decisions ---------------------------------------------------------------------------------
    def step(self, now: float) -> list:
        """The actions that move every deployment toward its target, given the events so far."""
        actions, self._pending_stops = self._pending_stops, []
        for deployment, target in list(self.targets.items()):
            if target.removed:
                for replica in target.replicas.values():
                    if replica.state != STOPPING:
                        replica.state = STOPPING
                        actions.append(Stop(deployment, replica.replica_id, True))
                if not target.replicas:
                    del self.targets[deployment]
                continue
            actions += self._converge(deployment, target)
            for replica in target.replicas.values():
                if (
                    replica.state == RUNNING
                    and not replica.check_pending
                    and now - replica.last_check >= target.health_check_period_s
                ):
                    replica.check_pending = True
                    actions.append(CheckHealth(deployment, replica.replica_id))
        return actions

    def _converge(self, deployment: str, target: Target) -> list:
        actions = []
        alive = [r for r in target.replicas.values() if r.state != STOPPING]
        new = [r for r in alive if r.version == target.version]
        old = [r for r in alive if r.version != target.version]
        new_running = [r for r in new if r.state == RUNNING]
        old_running = [r for r in old if r.state == RUNNING]
        wanted = target.num_replicas

        def stop(replica):
            replica.state = STOPPING
            actions.append(Stop(deployment, replica.replica_id, True))

        for replica in old:
            if replica.state == STARTING:  # serves nobody yet: no reason to wait for it
                stop(replica)
        # Old replicas serve until new ones run in their place.
        keep_old = max(0, wanted - len(new_running))
        for replica in old_running[keep_old:]:
            stop(replica)
        alive_count = len(new) + min(len(old_running), keep_old)
        if len(new) > wanted:
            extra = sorted(new, key=lambda r: (r.state == RUNNING, r.replica_id))[: len(new) - wanted]
            for replica in extra:
                stop(replica)
        elif len(new) < wanted and not target.failed_message:
            surge = max(1, math.ceil(0.2 * wanted))
            room = wanted + surge - alive_count if old_running[:keep_old] else wanted - len(new)
            for _ in range(max(0, min(wanted - len(new), room))):
                self._next_id += 1
                replica_id = f"{deployment.split('#', 1)[-1]}#{self._next_id}"
                target.replicas[replica_id] = Replica(replica_id, target.version)
                self._owner[replica_id] = deployment
                actions.append(Start(deployment, replica_id, target.version))
        return actions

    # --- views -------------------------------------------------------------------------------------
    def running(self, deployment: str) -> list:
        """The ids of the replicas that may take requests (running, of any version)."""
        target = self.targets.get(deployment)
        if target is None:
            return []
        return sorted(r.replica_id for r in target.replicas.values() if r.state == RUNNING)

    def status(self, deployment: str) -> tuple:
        """(status, status_trigger, message, {replica state: count}) in Ray Serve's terms."""
        target = self.targets[deployment]
        counts: dict = {}
        for replica in target.replicas.values():
            counts[replica.state] = counts.get(replica.state, 0) + 1
        new_running = sum(r.state == RUNNING and r.version == target.version for r in target.replicas.values())
        settled = new_running == target.num_replicas and len(target.replicas) == new_running
        if target.failed_message:
            return DEPLOY_FAILED, "REPLICA_STARTUP_FAILED", target.failed_message, counts
        if settled:
            target.scaling, target.lost = "", False
            return (
                HEALTHY,
                "CONFIG_UPDATE_COMPLETED" if target.trigger != "AUTOSCALING" else "UPSCALE_COMPLETED",
                "",
                counts,
            )
        if target.lost:
            return UNHEALTHY, target.trigger, "A replica failed; a replacement is starting.", counts
        if target.scaling:
            return target.scaling, "AUTOSCALING", "", counts
        return UPDATING, target.trigger, "", counts

    def _replica(self, replica_id: str):
        deployment = self._owner.get(replica_id)
        return None if deployment is None else self.targets[deployment].replicas.get(replica_id)

    def _forget(self, replica_id: str):
        deployment = self._owner.pop(replica_id)
        self.targets[deployment].replicas.pop(replica_id, None)
