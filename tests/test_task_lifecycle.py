"""The owner's task lifecycle state machine (runtime/client/task_lifecycle.py), without sockets."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from ember import exceptions
from ember.runtime.client import task_lifecycle as life
from ember.runtime.client.task_lifecycle import (
    CANCEL_LEASE_REQUEST,
    CANCEL_TASK,
    CLOSE_WORKER,
    DISPATCH,
    FAIL,
    FINISHED,
    FORGET_REPLY,
    KILL_WORKER,
    LEASE_LINGER,
    LEASE_TURN,
    MAX_LEASE_REQUESTS,
    OWN_MANAGER,
    PIPELINE,
    QUEUED,
    RECORD,
    REQUEST_LEASE,
    RESUBMIT,
    RETURN_LEASE,
    RUNNING,
    WAITING,
    TaskLifecycle,
)
from ember.runtime.client.task_spec import TaskSpec
from ember.runtime.ids import new_id, new_task_id, return_object_id
from ember.runtime.message_fields import Return
from ember.runtime.messages import LeaseGranted, TaskResult

CPU = {"CPU": 1.0}
KEY = (tuple(sorted(CPU.items())), repr(None))


def machine(locality=None) -> TaskLifecycle:
    counter = itertools.count()
    return TaskLifecycle(
        locality=locality or (lambda spec: OWN_MANAGER), new_rid=lambda: next(counter).to_bytes(8, "big")
    )


def task(name="f", retries=0, actor=None, parent=None) -> TaskSpec:
    spec = TaskSpec()
    spec.task_id = new_task_id()
    spec.name = name
    spec.header = {}
    spec.refs = []
    spec.return_ids = [return_object_id(spec.task_id, 0)]
    spec.resources = spec.running = CPU
    spec.key = KEY
    spec.retries_left = retries
    spec.retry_exceptions = False
    spec.actor = actor
    spec.parent = parent
    return spec


def grant(rid, node=b"node-1", wid=None) -> LeaseGranted:
    return LeaseGranted(rid=rid, wid=wid or new_id(), addr="tcp://w", caddr="tcp://w-client", pid=7, node_id=node)


def ok(spec, stored=False, **fields) -> TaskResult:
    ret = Return("s", 10, b"node-1") if stored else Return("v", 0, 2)
    return TaskResult(rid=spec.task_id, rets=[ret], **fields)


def kinds(actions) -> list:
    return [action[0] for action in actions]


def of(actions, kind) -> list:
    return [action for action in actions if action[0] == kind]


def rids(actions) -> list:
    return [action[3] for action in of(actions, REQUEST_LEASE)]


def leased(tasks: TaskLifecycle, spec, now=0.0):
    """Submit ``spec`` alone and grant its lease: returns the lease, the task running on it."""
    (rid,) = rids(tasks.submitted(spec))
    actions = tasks.lease_granted(KEY, rid, grant(rid), now)
    assert kinds(actions) == [DISPATCH] and spec.state == RUNNING
    return spec.lease


def pipelined(tasks: TaskLifecycle, retries=0):
    """Ten tasks queued, one worker granted: it runs the first and has the second sent ahead."""
    specs = [task(retries=retries) for _ in range(10)]
    requests = [rid for spec in specs for rid in rids(tasks.submitted(spec))]
    lease = tasks.lease_granted(KEY, requests[0], grant(requests[0]), 0.0)[0][2]
    assert list(lease.inflight) == [specs[0].task_id, specs[1].task_id]
    return lease, specs[0], specs[1]


def test_lease_requests_and_pipelining_for_n_queued_tasks():
    tasks = machine()
    specs = [task() for _ in range(20)]
    actions = [a for spec in specs for a in tasks.submitted(spec)]
    assert kinds(actions) == [REQUEST_LEASE] * MAX_LEASE_REQUESTS  # at most 8 workers asked at a time
    assert all(spec.state == QUEUED for spec in specs)
    first = rids(actions)[0]
    # One worker: it gets a task, one more worker is asked for, and a second task is sent ahead to
    # it because more tasks are queued than the workers on their way can take.
    actions = tasks.lease_granted(KEY, first, grant(first), 1.0)
    assert kinds(actions) == [DISPATCH, REQUEST_LEASE, DISPATCH]
    lease = actions[0][2]
    assert list(lease.inflight) == [specs[0].task_id, specs[1].task_id] and len(lease.inflight) == PIPELINE
    assert len(tasks.shapes[KEY].requests) == MAX_LEASE_REQUESTS and len(tasks.shapes[KEY].queue) == 18


def test_tasks_that_can_run_in_parallel_are_not_pipelined():
    tasks = machine()
    specs = [task() for _ in range(3)]
    requests = [rid for spec in specs for rid in rids(tasks.submitted(spec))]
    assert len(requests) == 3
    actions = tasks.lease_granted(KEY, requests[0], grant(requests[0]), 0.0)
    assert kinds(actions) == [DISPATCH]  # the other two wait for the two workers on their way
    for rid in requests[1:]:
        assert kinds(tasks.lease_granted(KEY, rid, grant(rid), 0.0)) == [DISPATCH]
    assert all(spec.state == RUNNING for spec in specs) and len(tasks.leases) == 3


def test_idle_lease_returned_after_linger_and_shape_forgotten():
    tasks = machine()
    spec = task()
    lease = leased(tasks, spec, now=10.0)
    actions = tasks.task_result(spec, ok(spec), [b"ok"], None, False, 10.0)
    assert kinds(actions) == [RECORD] and spec.state == FINISHED and not tasks.specs
    assert lease.idle_since == 10.0 and tasks.leases
    assert tasks.tick(10.0 + LEASE_LINGER / 2) == []  # kept for the next task of its shape
    follow = task()
    assert kinds(tasks.submitted(follow)) == [DISPATCH] and follow.lease is lease
    assert tasks.tick(10.0 + LEASE_LINGER * 10) == []  # busy: not returned
    tasks.task_result(follow, ok(follow), [b"ok"], None, False, 20.0)
    assert tasks.tick(20.0 + LEASE_LINGER * 2) == [(RETURN_LEASE, lease)]
    assert not tasks.leases and not tasks.shapes and tasks.idle()


def test_a_lease_busy_for_its_whole_turn_goes_back_between_tasks():
    """Tasks back to back would keep a lease for good, and another driver's request waiting at the
    node would never be granted: past LEASE_TURN the lease takes no new task and goes back once
    idle, and its shape asks again for what is still queued."""
    tasks = machine()
    lease, first, second = pipelined(tasks)
    assert tasks.tick(LEASE_TURN / 2) == [] and not lease.returning
    assert tasks.tick(LEASE_TURN) == [] and lease.returning  # busy: it ends its turn when idle
    actions = tasks.task_result(first, ok(first), [b"ok"], None, False, LEASE_TURN)
    assert kinds(actions) == [RECORD] and list(lease.inflight) == [second.task_id]  # nothing new sent
    actions = tasks.task_result(second, ok(second), [b"ok"], None, False, LEASE_TURN)
    assert (RETURN_LEASE, lease) in actions and not tasks.leases
    assert len(tasks.shapes[KEY].requests) == MAX_LEASE_REQUESTS  # the queue's eight asked for again
    # An idle lease whose turn ends is returned at the tick, and the queue asks for workers anew.
    tasks = machine()
    spec = task()
    lease = leased(tasks, spec, now=0.0)
    tasks.task_result(spec, ok(spec), [b"ok"], None, False, 0.01)
    assert tasks.tick(LEASE_TURN) == [(RETURN_LEASE, lease)]


def test_worker_death_retries_then_fails():
    tasks = machine()
    spec = task(retries=1)
    lease = leased(tasks, spec)
    actions = tasks.worker_died(lease.worker_id)
    assert kinds(actions) == [CLOSE_WORKER, FORGET_REPLY, REQUEST_LEASE]
    assert spec.retries_left == 0 and spec.state == QUEUED and not tasks.leases
    (rid,) = rids(actions)
    lease = tasks.lease_granted(KEY, rid, grant(rid), 0.0)[0][2]
    actions = tasks.worker_died(lease.worker_id)
    assert kinds(actions) == [CLOSE_WORKER, FORGET_REPLY, FAIL]
    assert isinstance(actions[2][2], exceptions.WorkerCrashedError) and spec.task_id not in tasks.specs
    assert tasks.worker_died(lease.worker_id) == []  # told twice


def test_unlimited_retries_stay_unlimited():
    tasks = machine()
    spec = task(retries=-1)
    lease = leased(tasks, spec)
    for _ in range(5):
        (rid,) = rids(tasks.worker_died(lease.worker_id))
        assert spec.retries_left == -1 and spec.state == QUEUED
        lease = tasks.lease_granted(KEY, rid, grant(rid), 0.0)[0][2]


def test_retiring_worker_requeues_its_tasks_without_using_a_retry():
    tasks = machine()
    lease, first, second = pipelined(tasks)
    actions = tasks.task_result(first, ok(first, retire=True), [b"ok"], None, False, 0.0)
    assert kinds(actions)[0] == RECORD and lease.retiring and DISPATCH not in kinds(actions)
    actions = tasks.worker_died(lease.worker_id)  # it exits (max_calls) with the task sent ahead
    assert FAIL not in kinds(actions) and second.state == QUEUED and second.retries_left == 0


def test_retiring_worker_closed_once_its_last_task_answers():
    tasks = machine()
    spec = task()
    lease = leased(tasks, spec)
    actions = tasks.task_result(spec, ok(spec, retire=True), [b"ok"], None, False, 0.0)
    assert kinds(actions) == [RECORD, CLOSE_WORKER] and not tasks.leases and not tasks.shapes[KEY].leases
    assert lease.worker_id not in tasks.leases


def test_rejected_task_goes_back_first_and_errors_retry_when_allowed():
    tasks = machine()
    spec, other = task(retries=2), task()
    lease = leased(tasks, spec)
    actions = tasks.task_result(spec, TaskResult(rid=spec.task_id, rejected=True), [], None, False, 0.0)
    assert kinds(actions) == [DISPATCH] and spec.lease is lease and spec.retries_left == 2
    actions = tasks.task_result(spec, TaskResult(rid=spec.task_id, err=True), [b"e"], None, True, 0.0)
    assert spec.retries_left == 1 and spec.state == RUNNING and kinds(actions) == [DISPATCH]
    # A retried error goes to the back of the queue: a task queued meanwhile runs first.
    tasks.submitted(other)
    actions = tasks.task_result(spec, TaskResult(rid=spec.task_id, err=True), [b"e"], None, True, 0.0)
    assert (DISPATCH, other, lease) in actions and spec.state == QUEUED and spec.retries_left == 0
    tasks.task_result(other, ok(other), [b"ok"], None, False, 0.0)
    actions = tasks.task_result(spec, TaskResult(rid=spec.task_id, err=True), [b"e"], None, False, 0.0)
    assert actions[0] == (RECORD, spec, actions[0][2], [b"e"], False) and spec.state == FINISHED


def test_refused_answer_fails_the_task():
    tasks = machine()
    spec = task()
    leased(tasks, spec)
    error = RuntimeError("the worker refused the task")
    assert tasks.task_result(spec, None, [], error, False, 0.0)[0] == (FAIL, spec, error)


def test_withdrawn_request_whose_grant_crosses_the_cancel_is_returned():
    tasks = machine()
    first, second = task(), task()
    (r1,) = rids(tasks.submitted(first))
    (r2,) = rids(tasks.submitted(second))
    tasks.lease_granted(KEY, r1, grant(r1), 0.0)
    actions = tasks.cancel(second.task_id, force=False, recursive=False)  # nothing queued is left
    assert kinds(actions) == [CANCEL_LEASE_REQUEST, FAIL] and actions[0] == (CANCEL_LEASE_REQUEST, OWN_MANAGER, r2)
    tasks.task_result(first, ok(first), [b"ok"], None, False, 0.0)
    shape = tasks.shapes[KEY]
    assert not shape.requests and r2 in shape.withdrawn
    actions = tasks.lease_granted(KEY, r2, grant(r2, wid=b"crossed"), 0.0)
    assert kinds(actions) == [RETURN_LEASE] and b"crossed" not in tasks.leases and not shape.withdrawn
    assert tasks.request_cancelled(KEY, r2) == []  # an answer to nothing


def test_spillback_asks_the_other_node():
    tasks = machine()
    spec = task()
    (rid,) = rids(tasks.submitted(spec))
    actions = tasks.spillback(KEY, rid, "tcp://other")
    (request,) = of(actions, REQUEST_LEASE)
    assert request[4] == "tcp://other" and request[5] is True
    lease = tasks.lease_granted(KEY, request[3], grant(request[3], node=b"node-2"), 0.0)[0][2]
    assert lease.manager == "tcp://other"
    tasks.task_result(spec, ok(spec), [b"ok"], None, False, 0.0)
    assert tasks.tick(1.0)[0][1].manager == "tcp://other"  # it goes back to the manager that granted it


def test_lease_refused_fails_the_queued_tasks():
    tasks = machine()
    specs = [task(), task()]
    requests = [rid for spec in specs for rid in rids(tasks.submitted(spec))]
    actions = tasks.lease_refused(KEY, requests[0], "no node has that")
    assert kinds(actions) == [FAIL, FAIL]
    assert all(isinstance(a[2], exceptions.TaskUnschedulableError) for a in actions) and not tasks.specs


def test_node_death_loses_its_leases_and_asks_its_requests_again():
    there = "tcp://node-2-manager"
    tasks = machine(locality=lambda spec: there if spec.name == "near-data" else OWN_MANAGER)
    running = task(retries=1)
    lease = leased(tasks, running)
    waiting = task("near-data")
    (request,) = of(tasks.submitted(waiting), REQUEST_LEASE)
    assert request[4] == there
    actions = tasks.node_dead(b"node-2", there)
    assert (FORGET_REPLY, request[3]) in actions and running.state == RUNNING
    (again,) = of(actions, REQUEST_LEASE)
    assert again[4] == OWN_MANAGER  # the shape asks our own manager from now on
    actions = tasks.node_dead(b"node-1", "tcp://node-1-manager")
    assert lease.worker_id not in tasks.leases and running.state == QUEUED and running.retries_left == 0
    assert (CLOSE_WORKER, lease) in actions


def test_cancel_queued_waiting_running_and_forced():
    tasks = machine()
    queued = task()
    tasks.submitted(queued)
    actions = tasks.cancel(queued.task_id, force=False, recursive=False)
    # Its lease request goes with it: left at the node manager, it would be demand for nothing.
    assert kinds(actions) == [CANCEL_LEASE_REQUEST, FAIL] and isinstance(actions[1][2], exceptions.TaskCancelledError)
    assert not tasks.shapes[KEY].queue and not tasks.shapes[KEY].requests
    assert tasks.cancel(queued.task_id, True, False) == []

    waiting = task()
    assert tasks.submitted(waiting, [b"arg"]) == [] and waiting.state == WAITING
    assert kinds(tasks.cancel(waiting.task_id, False, False)) == [FAIL]
    assert tasks.argument_ready(b"arg") == []  # it does not run after all

    lease, running, ahead = pipelined(tasks)
    assert tasks.cancel(ahead.task_id, force=True, recursive=True) == [
        (CANCEL_TASK, "tcp://w-client", ahead.task_id, True)  # not running yet: refused when its turn comes
    ]
    assert tasks.cancel(running.task_id, force=True, recursive=False) == [(KILL_WORKER, lease)]
    actions = tasks.worker_died(lease.worker_id)
    failed = {a[1].task_id: a[2] for a in of(actions, FAIL)}
    assert isinstance(failed[running.task_id], exceptions.TaskCancelledError)
    assert isinstance(failed[ahead.task_id], exceptions.TaskCancelledError)  # cancelled too, above


def test_forced_cancel_requeues_the_task_sent_ahead_without_a_retry():
    tasks = machine()
    lease, running, ahead = pipelined(tasks, retries=1)
    assert kinds(tasks.cancel(running.task_id, force=True, recursive=False)) == [KILL_WORKER]
    actions = tasks.worker_died(lease.worker_id)
    assert [a[1] for a in of(actions, FAIL)] == [running] and ahead.state == QUEUED and ahead.retries_left == 1


def test_cancel_children_and_actor_calls():
    tasks = machine()
    parent = new_task_id()
    children = [task(parent=parent), task(parent=parent)]
    other = task()
    for spec in [*children, other]:
        tasks.submitted(spec)
    actions = tasks.cancel_children(parent)
    assert [a[1] for a in of(actions, FAIL)] == children and other.state == QUEUED
    call = task(actor=b"actor")
    assert tasks.submitted(call) == [(life.ACTOR_CALL, call)]
    assert kinds(tasks.cancel(call.task_id, False, False)) == [life.ACTOR_CANCEL]
    tasks.finished(call)
    assert call.task_id not in tasks.specs


def test_arguments_ready_queue_the_task():
    tasks = machine()
    spec = task()
    assert tasks.submitted(spec, [b"a", b"b"]) == [] and spec.state == WAITING
    assert tasks.argument_ready(b"a") == []
    assert kinds(tasks.argument_ready(b"b")) == [REQUEST_LEASE] and spec.state == QUEUED
    call = task(actor=b"actor")
    tasks.submitted(call, [b"c"])
    assert tasks.argument_ready(b"c") == [(life.ACTOR_READY, call)]


def test_lineage_rebuild():
    tasks = machine()
    spec = task(retries=1)
    leased(tasks, spec)
    actions = tasks.task_result(spec, ok(spec, stored=True), [], None, False, 0.0)
    assert actions[0][0] == RECORD and actions[0][4] is True  # its arguments are kept
    oid = spec.return_ids[0]
    assert tasks.can_rebuild(oid) and not tasks.specs
    assert tasks.rebuild([oid, oid]) == [(RESUBMIT, spec)]  # once, however many of its returns are lost
    assert spec.retries_left == 0 and not tasks.lineage and tasks.rebuild([oid]) == []
    assert kinds(tasks.submitted(spec)) == [DISPATCH]  # the idle lease takes it again
    actions = tasks.task_result(spec, ok(spec, stored=True), [], None, False, 0.0)
    assert actions[0][4] is False and not tasks.can_rebuild(oid)  # no retries left: no lineage


def test_lineage_released_once_no_return_is_referenced():
    tasks = machine()
    spec = task(retries=1)
    leased(tasks, spec)
    tasks.task_result(spec, ok(spec, stored=True), [], None, False, 0.0)
    assert tasks.lineage_released(spec.task_id, {spec.return_ids[0]: None}) is None
    assert tasks.lineage_released(spec.task_id, {}) is spec and not tasks.lineage


def test_dispatch_failure_fails_the_task_and_the_worker_takes_the_next():
    tasks = machine()
    broken, fine = task(), task()
    lease = leased(tasks, broken)
    tasks.submitted(fine)
    error = exceptions.ObjectLostError("ab", "An argument of the task was freed.")
    actions = tasks.dispatch_failed(broken, error)
    assert actions[0] == (FAIL, broken, error)
    assert (DISPATCH, fine, lease) in actions
    assert tasks.dispatch_failed(broken, error) == []


def test_invalid_events_give_nothing_and_change_nothing():
    tasks = machine()
    spec = task()
    lease = leased(tasks, spec)
    before = snapshot(tasks)
    stranger = task()
    assert tasks.task_result(stranger, ok(stranger), [b"ok"], None, False, 0.0) == []
    assert tasks.lease_granted(KEY, b"unknown!", grant(b"unknown!"), 0.0) == []
    assert tasks.lease_granted(("no", "shape"), b"unknown!", grant(b"unknown!"), 0.0) == []
    assert tasks.spillback(KEY, b"unknown!", "tcp://x") == []
    assert tasks.lease_refused(KEY, b"unknown!", "no") == []
    assert tasks.request_lost(KEY, b"unknown!") == []
    assert tasks.worker_died(b"not a worker") == []
    assert tasks.cancel(new_task_id(), True, True) == []
    assert tasks.argument_ready(b"nobody waits") == []
    assert tasks.dispatch_failed(stranger, RuntimeError()) == []
    assert tasks.rebuild([return_object_id(new_task_id(), 0)]) == []
    assert tasks.submitted(spec) == []  # submitted twice
    assert snapshot(tasks) == before
    tasks.task_result(spec, ok(spec), [b"ok"], None, False, 0.0)
    assert tasks.task_result(spec, ok(spec), [b"ok"], None, False, 0.0) == []  # answered twice
    assert not lease.inflight


def test_same_worker_granted_twice_is_not_leased_twice():
    tasks = machine()
    a, b = task(), task()
    r1, r2 = rids(tasks.submitted(a)) + rids(tasks.submitted(b))
    tasks.lease_granted(KEY, r1, grant(r1, wid=b"w"), 0.0)
    assert tasks.lease_granted(KEY, r2, grant(r2, wid=b"w"), 0.0) == []
    check_invariants(tasks)


def snapshot(tasks: TaskLifecycle):
    return (
        {tid: (spec.state, spec.lease) for tid, spec in tasks.specs.items()},
        {key: (list(s.queue), dict(s.leases), dict(s.requests), dict(s.withdrawn)) for key, s in tasks.shapes.items()},
        {wid: dict(lease.inflight) for wid, lease in tasks.leases.items()},
        dict(tasks.lineage),
    )


def check_invariants(tasks: TaskLifecycle) -> None:
    queued = [spec for shape in tasks.shapes.values() for spec in shape.queue]
    inflight = [spec for lease in tasks.leases.values() for spec in lease.inflight.values()]
    assert len({id(s) for s in queued}) == len(queued), "a task queued twice"
    assert not {id(s) for s in queued} & {id(s) for s in inflight}, "a task both queued and in flight"
    assert len({id(s) for s in inflight}) == len(inflight), "a task on two workers"
    for spec in queued:
        assert spec.state == QUEUED and spec.lease is None and tasks.specs.get(spec.task_id) is spec
    for spec in inflight:
        assert spec.state == RUNNING and spec.lease.inflight.get(spec.task_id) is spec
        assert tasks.specs.get(spec.task_id) is spec
    for spec in tasks.specs.values():
        if spec.actor is None:
            assert spec.state in (WAITING, QUEUED, RUNNING)
            if spec.state == QUEUED:
                assert any(s is spec for s in queued)
            if spec.state == RUNNING:
                assert any(s is spec for s in inflight)
    shape_leases = [(wid, lease) for shape in tasks.shapes.values() for wid, lease in shape.leases.items()]
    assert len(shape_leases) == len(tasks.leases), "every lease in exactly one shape"
    for wid, lease in shape_leases:
        assert tasks.leases[wid] is lease and tasks.shapes[lease.key].leases[wid] is lease
        assert len(lease.inflight) <= PIPELINE
    for shape in tasks.shapes.values():
        assert len(shape.requests) <= MAX_LEASE_REQUESTS
        assert not set(shape.requests) & set(shape.withdrawn)
    for spec in tasks.lineage.values():
        assert spec.state == FINISHED and spec.task_id not in tasks.specs


OPS = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 1 << 16)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_random_event_sequences_keep_the_invariants(ops):
    """Drive the machine as the node managers and workers could, in any order, answering only
    what the actions asked; after every event the tables must agree with one another."""
    tasks = machine(locality=lambda spec: "tcp://far" if spec.name == "far" else OWN_MANAGER)
    asked = []  # (key, rid, manager) of requests not answered yet
    sent = []  # specs dispatched, not answered
    finished = {}  # task id -> times it ended (RECORD / FAIL)
    now = 0.0
    node_of = {OWN_MANAGER: b"node-1", "tcp://far": b"node-2"}

    def run(actions):
        for action in actions:
            kind = action[0]
            if kind == REQUEST_LEASE:
                asked.append((action[2], action[3], action[4]))
            elif kind == DISPATCH:
                sent.append(action[1])
            elif kind == FORGET_REPLY:
                sent[:] = [s for s in sent if s.task_id != action[1]]
                asked[:] = [a for a in asked if a[1] != action[1]]
            elif kind in (RECORD, FAIL):
                finished[action[1].task_id] = finished.get(action[1].task_id, 0) + 1
            elif kind == RESUBMIT:
                finished.pop(action[1].task_id, None)
                run(tasks.submitted(action[1]))

    for op, n in ops:
        if op <= 2 or not (asked or sent or tasks.specs):
            spec = task("far" if n % 5 == 0 else "f", retries=n % 3 - 1)
            run(tasks.submitted(spec, [b"arg"] if n % 7 == 0 else ()))
        elif op == 3 and asked:
            key, rid, manager = asked.pop(n % len(asked))
            choice = n % 10
            if choice < 7:
                run(tasks.lease_granted(key, rid, grant(rid, node=node_of.get(manager, b"node-3")), now))
            elif choice == 7:
                run(tasks.request_cancelled(key, rid))
            elif choice == 8:
                run(tasks.spillback(key, rid, "tcp://far"))
            else:
                run(tasks.request_lost(key, rid))
        elif op in (4, 5) and sent:
            spec = sent.pop(n % len(sent))
            choice = n % 6
            if choice == 0:
                result = TaskResult(rid=spec.task_id, err=True)
            elif choice == 1:
                result = TaskResult(rid=spec.task_id, rejected=True)
            else:
                result = ok(spec, stored=choice == 2, retire=choice == 3)
            run(tasks.task_result(spec, result, [b"x"], None, n % 2 == 0, now))
        elif op == 6 and tasks.leases:
            run(tasks.worker_died(list(tasks.leases)[n % len(tasks.leases)]))
        elif op == 7:
            node = [b"node-1", b"node-2"][n % 2]
            run(tasks.node_dead(node, "tcp://far" if node == b"node-2" else "tcp://node-1"))
        elif op == 8 and tasks.specs:
            run(tasks.cancel(list(tasks.specs)[n % len(tasks.specs)], force=n % 2 == 0, recursive=False))
        elif op == 9:
            now += (n % 100) / 1000
            run(tasks.tick(now))
        elif op == 10:
            run(tasks.argument_ready(b"arg"))
        elif op == 11 and tasks.lineage:
            run(tasks.rebuild([return_object_id(list(tasks.lineage)[n % len(tasks.lineage)], 0)]))
        # Invalid events in between change nothing.
        before = snapshot(tasks)
        assert tasks.lease_granted(KEY, b"bogus-id", grant(b"bogus-id"), now) == []
        assert tasks.task_result(task(), ok(task()), [], None, False, now) == []
        assert snapshot(tasks) == before
        check_invariants(tasks)
        for key, rid, manager in asked:  # an answer still to come finds its request (a grant goes back)
            assert tasks.shapes[key].requests.get(rid, tasks.shapes[key].withdrawn.get(rid)) == manager
        assert all(count == 1 for count in finished.values()), "a task ended twice"


def test_return_idle_gives_back_idle_leases_at_once_but_not_busy_or_wanted_ones():
    """Before an actor's creation the owner returns its idle leases without the linger wait (the node
    would start a new process for the actor otherwise); a lease running a task, or whose shape has
    tasks queued, stays."""
    tasks = machine()
    spec = task()
    lease = leased(tasks, spec, now=10.0)
    assert tasks.return_idle() == []  # running a task
    tasks.task_result(spec, ok(spec), [b"ok"], None, False, 10.0)
    assert tasks.return_idle() == [(RETURN_LEASE, lease)]  # idle for no time at all
    assert not tasks.leases and tasks.tick(10.0 + LEASE_LINGER * 2) == []  # and not returned twice
    busy, queued = pipelined(tasks)[0], [task() for _ in range(2)]
    for spec in queued:
        tasks.submitted(spec)
    assert tasks.return_idle() == [] and busy.worker_id in tasks.leases
