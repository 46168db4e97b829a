"""The head's actor lifecycle state machine (runtime/head/actor_lifecycle.py), without sockets."""

import pytest

from ember.runtime.head import actor_lifecycle as life
from ember.runtime.head.actor_lifecycle import (
    ALIVE,
    CANCEL_LEASE,
    CREATE_INSTANCE,
    DEAD,
    KILL_WORKER,
    NOTIFY,
    PENDING,
    PLACE,
    RESTARTING,
    ActorLifecycle,
    outlives_job,
)


def started(max_restarts=0, detached=False) -> ActorLifecycle:
    """An actor whose constructor ran on a granted worker."""
    actor = ActorLifecycle(max_restarts, detached)
    assert actor.wants_worker()
    actor.lease_requested()
    assert not actor.wants_worker()
    assert actor.worker_granted() == [CREATE_INSTANCE]
    assert actor.constructed() == [NOTIFY]
    assert actor.state == ALIVE
    return actor


def died(actions) -> str | None:
    causes = [a[1] for a in actions if isinstance(a, tuple) and a[0] == life.DIED]
    return causes[0] if causes else None


@pytest.mark.parametrize("bad", [-2, 1.5, True, "3", None])
def test_max_restarts_is_validated(bad):
    with pytest.raises(ValueError):
        ActorLifecycle(bad)


def test_restarts_until_max_restarts_then_dies():
    actor = started(max_restarts=2)
    for n in (1, 2):
        assert actor.worker_died("crash") == [NOTIFY, PLACE]
        assert actor.state == RESTARTING and actor.num_restarts == n and actor.wants_worker()
        actor.lease_requested()
        actor.worker_granted()
        assert actor.constructed() == [NOTIFY] and actor.state == ALIVE
    assert died(actor.worker_died("crash")) == "crash"
    assert actor.state == DEAD and actor.num_restarts == 2 and not actor.wants_worker()


def test_unlimited_restarts():
    actor = started(max_restarts=-1)
    for _ in range(50):
        assert actor.worker_died("crash") == [NOTIFY, PLACE]
        actor.lease_requested()
        actor.worker_granted()
        actor.constructed()
    assert actor.state == ALIVE and actor.num_restarts == 50


def test_kill_without_restart_stops_the_worker_and_dies_with_the_cause():
    actor = started(max_restarts=5)
    actions = actor.kill("killed", no_restart=True)
    assert actions[0] == KILL_WORKER and died(actions) == "killed"
    # The worker's death reported afterwards changes nothing.
    assert actor.worker_died("crash") == [] and actor.death_cause == "killed"


def test_kill_with_restart_lets_the_workers_death_restart_it():
    actor = started(max_restarts=1)
    assert actor.kill("killed", no_restart=False) == [KILL_WORKER]
    assert actor.state == ALIVE
    assert actor.worker_died("crash") == [NOTIFY, PLACE]


def test_kill_while_waiting_for_a_worker_cancels_the_request_and_a_late_grant_is_stopped():
    actor = ActorLifecycle()
    actor.lease_requested()
    actions = actor.kill("killed")
    assert actions[0] == CANCEL_LEASE and died(actions) == "killed"
    assert actor.worker_granted() == [KILL_WORKER]
    assert not actor.has_worker


def test_constructor_failure_never_restarts():
    actor = ActorLifecycle(max_restarts=-1)
    actor.lease_requested()
    actor.worker_granted()
    actions = actor.constructor_failed("boom")
    assert died(actions) == "boom" and actions[-1] == KILL_WORKER
    assert actor.worker_died("crash") == [] and actor.state == DEAD


def test_a_constructor_answer_without_a_worker_is_ignored():
    actor = ActorLifecycle()
    assert actor.constructed() == [] and actor.state == PENDING


def test_withdrawn_and_lost_leases():
    actor = ActorLifecycle()
    actor.lease_requested()
    assert actor.lease_withdrawn() == [PLACE]
    actor.lease_requested()
    assert actor.lease_lost() == [] and actor.wants_worker()
    with pytest.raises(ValueError):
        started().lease_requested()  # an alive actor asks for no worker


def test_lease_failure_and_unplaceable_are_final():
    actor = ActorLifecycle(max_restarts=3)
    actor.lease_requested()
    assert died(actor.lease_failed("no")) == "no"
    assert actor.kill("again") == [] and actor.death_cause == "no"
    assert died(ActorLifecycle().unplaceable("nowhere")) == "nowhere"


def test_job_end_and_owner_death_spare_detached_actors():
    plain, detached = started(), started(detached=True)
    assert died(plain.job_finished(outlives_job=False)) == life.JOB_FINISHED_CAUSE
    assert detached.job_finished(outlives_job=True) == []
    assert detached.owner_died() == [] and detached.state == ALIVE
    child = started(max_restarts=3)
    actions = child.owner_died()
    assert KILL_WORKER in actions and died(actions) == life.OWNER_DIED_CAUSE


def test_outlives_job_follows_the_owner_chain():
    table = {
        b"detached": (True, None, False),
        b"child": (False, b"detached", False),
        b"grandchild": (False, b"child", False),
        b"orphan": (False, b"dead-owner", False),
        b"dead-owner": (True, None, True),
        b"plain": (False, None, False),
        b"loop-a": (False, b"loop-b", False),
        b"loop-b": (False, b"loop-a", False),
    }
    assert outlives_job(b"detached", table.get)
    assert outlives_job(b"grandchild", table.get)
    assert not outlives_job(b"orphan", table.get)  # its detached owner is dead
    assert not outlives_job(b"plain", table.get)
    assert not outlives_job(b"unknown", table.get)
    assert not outlives_job(b"loop-a", table.get)  # a forged owner cycle ends
