"""Serve's decisions without sockets: the reconciler, Ray's autoscaling rule, replica choice,
route matching and option validation."""

import random

import pytest

from ember.serve.autoscaling import AutoscalingState, desired_replicas
from ember.serve.config import AutoscalingConfig, DeploymentConfig, HTTPOptions
from ember.serve.proxy import match_route
from ember.serve.reconciler import (
    DEPLOY_FAILED,
    HEALTHY,
    STOPPING,
    UNHEALTHY,
    UPDATING,
    CheckHealth,
    Reconciler,
    Start,
    Stop,
)
from ember.serve.router import _Slot, choose

D = "app#Model"


def starts(actions):
    return [a for a in actions if isinstance(a, Start)]


def stops(actions):
    return [a for a in actions if isinstance(a, Stop)]


def run_all(reconciler, actions, now=0.0):
    for action in starts(actions):
        reconciler.started(action.replica_id, now)


def test_deploy_starts_the_wanted_replicas_and_becomes_healthy():
    r = Reconciler()
    r.set_target(D, "v1", 3)
    actions = r.step(0)
    assert len(starts(actions)) == 3 and {a.version for a in starts(actions)} == {"v1"}
    assert r.status(D)[0] == UPDATING
    assert r.step(0) == []  # nothing more while they start
    run_all(r, actions)
    assert r.status(D)[0] == HEALTHY and len(r.running(D)) == 3


def test_scale_up_and_down_stops_starting_replicas_first():
    r = Reconciler()
    r.set_target(D, "v1", 1)
    run_all(r, r.step(0))
    r.set_target(D, "v1", 3)
    grow = r.step(0)
    assert len(starts(grow)) == 2
    r.started(starts(grow)[0].replica_id, 0)
    r.set_target(D, "v1", 1)
    shrink = r.step(0)
    # The one still starting goes first, then the newest running one.
    assert [s.replica_id for s in stops(shrink)][0] == starts(grow)[1].replica_id
    assert len(stops(shrink)) == 2
    for stop in stops(shrink):
        r.stopped(stop.replica_id)
    assert len(r.running(D)) == 1 and r.status(D)[0] == HEALTHY


def test_rolling_update_keeps_old_replicas_serving_until_new_ones_run():
    r = Reconciler()
    r.set_target(D, "v1", 5)
    run_all(r, r.step(0))
    old = set(r.running(D))
    r.set_target(D, "v2", 5)
    serving_min = 5
    for _ in range(20):
        actions = r.step(0)
        for stop in stops(actions):
            r.stopped(stop.replica_id)
        serving_min = min(serving_min, len(r.running(D)))
        alive = [x for x in r.targets[D].replicas.values() if x.state != STOPPING]
        assert len(alive) <= 5 + 1  # a surge of max(1, 20%) above the target
        run_all(r, actions)
        if r.status(D)[0] == HEALTHY:
            break
    assert serving_min >= 5 and r.status(D)[0] == HEALTHY
    assert not old & set(r.running(D))
    assert {x.version for x in r.targets[D].replicas.values()} == {"v2"}


def test_a_dead_replica_is_replaced_and_the_deployment_is_unhealthy_meanwhile():
    r = Reconciler()
    r.set_target(D, "v1", 2)
    run_all(r, r.step(0))
    victim = r.running(D)[0]
    r.died(victim, "SIGKILL")
    assert r.status(D)[0] == UNHEALTHY
    replacement = starts(r.step(0))
    assert len(replacement) == 1 and replacement[0].replica_id != victim
    run_all(r, replacement)
    assert r.status(D)[0] == HEALTHY


def test_health_checks_are_periodic_and_a_failure_replaces_the_replica():
    r = Reconciler()
    r.set_target(D, "v1", 1, health_check_period_s=5)
    run_all(r, r.step(0), now=0)
    replica = r.running(D)[0]
    assert not [a for a in r.step(4) if isinstance(a, CheckHealth)]
    checks = [a for a in r.step(5) if isinstance(a, CheckHealth)]
    assert checks == [CheckHealth(D, replica)]
    assert not [a for a in r.step(11) if isinstance(a, CheckHealth)]  # one check in flight at a time
    r.health(replica, True, 11)
    assert not [a for a in r.step(15) if isinstance(a, CheckHealth)]
    r.step(16)
    r.health(replica, False, 16)
    actions = r.step(16)
    assert Stop(D, replica, True) in actions and len(starts(actions)) == 1
    assert r.status(D)[0] == UNHEALTHY


def test_repeated_start_failures_fail_the_deployment_until_a_new_version():
    r = Reconciler()
    r.set_target(D, "v1", 2)
    for _ in range(10):
        actions = starts(r.step(0))
        if not actions:
            break
        for start in actions:
            r.start_failed(start.replica_id, "ZeroDivisionError: boom")
    status, trigger, message, _ = r.status(D)
    assert status == DEPLOY_FAILED and "boom" in message
    assert starts(r.step(0)) == []
    r.set_target(D, "v2", 2)
    assert len(starts(r.step(0))) == 2


def test_removed_deployment_stops_everything_and_is_forgotten():
    r = Reconciler()
    r.set_target(D, "v1", 2)
    run_all(r, r.step(0))
    r.remove(D)
    actions = r.step(0)
    assert len(stops(actions)) == 2 and all(s.graceful for s in stops(actions))
    for stop in stops(actions):
        r.stopped(stop.replica_id)
    r.step(0)
    assert D not in r.targets


def test_set_target_rejects_a_bad_count():
    with pytest.raises(ValueError):
        Reconciler().set_target(D, "v1", -1)


# --- autoscaling -----------------------------------------------------------------------------------


def config(**overrides):
    base = dict(min_replicas=1, max_replicas=10, target_ongoing_requests=2, upscale_delay_s=3, downscale_delay_s=10)
    return AutoscalingConfig(**{**base, **overrides})


def test_desired_replicas_follow_load_over_target_within_bounds():
    c = config()
    assert desired_replicas(c, 8, 1) == 4
    assert desired_replicas(c, 2, 1) == 1
    assert desired_replicas(c, 100, 2) == 10  # max_replicas
    assert desired_replicas(c, 0, 4) == 1  # min_replicas
    assert desired_replicas(config(min_replicas=0), 3, 0) == 2  # from zero
    assert desired_replicas(config(upscale_smoothing_factor=0.5), 8, 1) == 3  # 1 + (4 - 1) * 0.5 = 2.5


def test_autoscaling_waits_for_the_delays():
    state = AutoscalingState(config())
    assert state.target == 1
    for t in range(3):
        state.record(t, 8)
        assert state.decide(t, 1) == 1
    state.record(3, 8)
    assert state.decide(3, 1) == 4
    for t in range(4, 14):
        state.record(t, 0)
        state.decide(t, 4)
    assert state.target == 4  # the load average still includes the busy seconds of the look-back window
    state = AutoscalingState(config(look_back_period_s=1))
    state.target = 4
    state.record(0, 0)
    assert state.decide(0, 4) == 4
    state.record(9, 0)
    assert state.decide(9, 4) == 4
    state.record(10, 0)
    assert state.decide(10, 4) == 1


def test_autoscaling_config_validation():
    with pytest.raises(ValueError):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError):
        AutoscalingConfig(target_ongoing_requests=0)
    with pytest.raises(ValueError):
        AutoscalingConfig.of({"nope": 1})
    with pytest.raises(ValueError):
        DeploymentConfig(num_replicas=2, autoscaling_config={"max_replicas": 3})
    auto = DeploymentConfig(num_replicas="auto")
    assert auto.autoscaling_config.max_replicas == 100 and auto.target_replicas() == 1
    with pytest.raises(ValueError):
        DeploymentConfig(max_ongoing_requests=0)
    with pytest.raises(ValueError):
        DeploymentConfig(max_queued_requests=0)
    with pytest.raises(ValueError):
        DeploymentConfig(ray_actor_options={"max_restarts": 3})
    with pytest.raises(TypeError):
        HTTPOptions.of("port=80")


# --- routing ---------------------------------------------------------------------------------------


def test_power_of_two_choices_prefers_the_less_loaded_and_respects_max_ongoing():
    rng = random.Random(7)
    a, b, c = _Slot("a", None), _Slot("b", None), _Slot("c", None)
    a.inflight, b.inflight, c.inflight = 3, 0, 3
    picks = [choose([a, b, c], 4, rng=rng) for _ in range(200)]
    assert picks.count(b) > 100  # b wins every draw it is in (2 of 3 draws)
    a.inflight = c.inflight = 4
    assert {choose([a, b, c], 4, rng=rng).replica_id for _ in range(20)} == {"b"}
    b.inflight = 4
    assert choose([a, b, c], 4, rng=rng) is None


def test_multiplexed_model_prefers_warm_replicas():
    a, b = _Slot("a", None, models=["m1"]), _Slot("b", None)
    a.inflight = 2
    assert {choose([a, b], 5, "m1").replica_id for _ in range(20)} == {"a"}
    assert choose([a, b], 5, "m2") is b


def test_match_route_takes_the_longest_prefix_on_segment_boundaries():
    routes = {"/": 1, "/api": 2, "/api/v2": 3}
    assert match_route(routes, "/api/v2/x") == "/api/v2"
    assert match_route(routes, "/api/v2") == "/api/v2"
    assert match_route(routes, "/apix") == "/"
    assert match_route({"/api": 2}, "/apix") is None
    assert match_route({"/api": 2}, "/api/") == "/api"
