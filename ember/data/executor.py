"""The streaming executor: blocks flow through physical operators within an object-store budget.

It runs as a generator in the consuming thread (or its prefetch thread): each ``next()`` launches whatever the budget
allows (downstream operators first, so the pipeline drains before it fills), waits for any task to
finish, and hands the consumer the next output block. The policy is plain state (``OpState`` and
``Budget``); the only I/O is ``ember.remote``/``wait``/``get``/``cancel``/``kill``. Whatever way the
generator ends (exhausted, an error, KeyboardInterrupt, the consumer closing it) its ``finally``
cancels the tasks still running and kills the pool's actors.

A block handed to the consumer leaves the executor's queues but not the store: the consumer holds it
until it asks for the next, and the one before that may still be on its way out (the release of a
dropped ref reaches the node manager asynchronously, and the node removes the file on a pool). Both
stay in the budget (``ConsumerLedger``) so the store holds at most the budget while the consumer
keeps pace; without them it went one block over when a release lagged (seen 1 in ~15 runs of the
5x-larger-than-store test).
"""

import collections
import time
import uuid
from dataclasses import dataclass

import ember
from ember.data.context import DataContext, cluster_resources
from ember.data.execution_stats import ExecutionStats, OpStats
from ember.data.plan import ActorPoolStrategy, PhysicalOp, read_tasks
from ember.data.tasks import BlockGroup, PoolWorker, run_block, run_group, slice_block


@dataclass
class _Running:
    block_ref: object
    seq: int
    in_bytes: int
    est_bytes: int
    actor: object = None
    started: float = 0.0


@dataclass
class _Actor:
    handle: object
    ready_ref: object
    ready: bool = False
    inflight: int = 0


def fn_label(state) -> str:
    return ", ".join(type(s.fn).__name__ if not isinstance(s.fn, type) else s.fn.__name__ for s in state.op.stages)


class OpState:
    """The run-time state of one physical operator."""

    def __init__(self, op: PhysicalOp, upstream: list, ctx: DataContext, cpus: float):
        self.op, self.upstream, self.ctx = op, upstream, ctx
        self.stats = OpStats(op.name)
        self.inputs = collections.deque()  # (item, in_bytes) waiting for a task
        self.outputs = collections.deque()  # (block_ref, meta) ready for downstream
        self.finished = {}  # seq -> bundle, completed out of order
        self.running = {}  # meta_ref -> _Running
        self.next_seq = self.next_out = 0
        self.stopped = False
        self.out_sizes = []
        self.actors = []
        self.pool_started = False
        self.creating = set()
        self.rows_passed = 0  # limit
        self.fn = None
        self.groups = [[] for _ in upstream]  # a barrier's inputs, one list per upstream
        self.throttled = False  # the last scheduling pass held a ready task back for the budget
        # With op.min_rows: consecutive upstream blocks gathered for the next task, and their rows.
        self.group: list = []
        self.group_rows = 0
        if op.kind == "map" and op.read is not None:
            read = op.read
            remaining = read.limit
            for task in read_tasks(op):
                if remaining is not None and remaining <= 0:
                    break
                self.inputs.append((task, 0))
                if remaining is not None and task.num_rows is not None:
                    remaining -= task.num_rows
        if op.kind == "input":
            self.outputs.extend(op.bundles)
            self.next_seq = len(op.bundles)
        pool = op.compute if isinstance(op.compute, ActorPoolStrategy) else None
        self.pool = pool
        cap = op.concurrency if isinstance(op.concurrency, int) else None
        self.max_tasks = cap or max(2, int(2 * cpus))

    # -- state -------------------------------------------------------------------------------------

    def inputs_done(self) -> bool:
        return all(u.done() for u in self.upstream)

    def done(self) -> bool:
        if self.stopped:
            return not self.outputs
        return (
            self.inputs_done()
            and not self.inputs
            and not self.running
            and not self.finished
            and not self.outputs
            and not self.group
            and not any(u.outputs for u in self.upstream)
            and (self.op.kind != "barrier" or self.fn == "ran")
        )

    def held_bytes(self) -> int:
        own = sum(m.size_bytes for _, m in self.outputs) if self.op.kind != "input" else 0
        own += sum(m.size_bytes for _, m in self.finished.values())
        if self.op.read is None:  # a read's inputs are tasks of no bytes: summing them cost O(tasks) a pass
            own += sum(b for _, b in self.inputs)
        own += sum(m.size_bytes for group in self.groups for _, m in group)
        own += sum(m.size_bytes for _, m in self.group)
        own += sum(r.in_bytes + r.est_bytes for r in self.running.values())
        return own

    def held_blocks(self) -> int:
        outs = len(self.outputs) if self.op.kind != "input" else 0
        queued = len(self.inputs) if self.op.read is None else 0  # a read's inputs are tasks, not blocks
        groups = sum(len(g) for g in self.groups) + len(self.group)
        return outs + len(self.finished) + queued + len(self.running) + groups

    def has_slot(self) -> bool:
        """Whether another task may start: at most ``max_tasks`` run, and at most as many more wait,
        finished, for an earlier one to release them in order. Without the second bound one slow
        task (a worker still starting) lets the rest of the dataset run ahead of it, past what a
        limit downstream needed."""
        return len(self.running) < self.max_tasks and len(self.running) + len(self.finished) < 2 * self.max_tasks

    def estimate(self, in_bytes: int) -> int:
        if self.out_sizes:
            return int(sum(self.out_sizes[-8:]) / len(self.out_sizes[-8:]))
        if in_bytes:
            return in_bytes
        if self.op.read is not None and self.inputs and getattr(self.inputs[0][0], "size_bytes", None):
            return self.inputs[0][0].size_bytes
        return self.ctx.target_max_block_size // 16

    def pull(self):
        """Move finished upstream outputs into this operator's input queue (in upstream order)."""
        if self.op.kind == "barrier":
            for group, up in zip(self.groups, self.upstream):
                group.extend(up.outputs)
                up.outputs.clear()
            return
        if self.op.min_rows:
            return self._pull_groups()
        for up in self.upstream:
            while up.outputs and not self.stopped:
                bundle = up.outputs.popleft()
                self.inputs.append((bundle, bundle[1].size_bytes if up.op.kind != "input" else 0))
            if self.op.kind == "union" and not up.done():
                break  # a union keeps its inputs' order: the next input waits for this one

    def _pull_groups(self):
        """``pull`` for an operator whose tasks take ``min_rows`` at least: upstream blocks gather in
        ``group`` until they hold that many rows, then go as one input (a ``BlockGroup``)."""
        (up,) = self.upstream  # a map has one input
        while up.outputs and not self.stopped:
            bundle = up.outputs.popleft()
            self.group.append(bundle)
            self.group_rows += bundle[1].num_rows
            if self.group_rows >= self.op.min_rows:
                self._queue_group()
        # The last rows go as they are; so do the gathered ones when upstream cannot make more
        # before room is freed (its next task waits for the budget this group takes part of).
        if self.group and (up.done() or (up.throttled and not up.running)):
            self._queue_group()

    def _queue_group(self):
        size = sum(meta.size_bytes for _, meta in self.group)
        self.inputs.append((BlockGroup(self.group), size))
        self.group, self.group_rows = [], 0

    def release(self):
        while self.next_out in self.finished:
            bundle = self.finished.pop(self.next_out)
            self.outputs.append(bundle)
            self.next_out += 1
            self.stats.blocks_out += 1
            self.stats.rows_out += bundle[1].num_rows
            self.stats.bytes_out += bundle[1].size_bytes


class ConsumerLedger:
    """The blocks the consumer has been handed and may still have in the store, as the executor's
    budget counts them: the last ``window`` handed over (the one in use and the one being released;
    ``prefetch.PrefetchLedger`` adds those waiting in a prefetch queue). ``stopped``: the consumer
    is gone, so the execution ends at its next pass; ``poll_seconds``: how long the executor waits for
    tasks before it looks at ``stopped`` again."""

    poll_seconds = 1.0

    def __init__(self, window: int = 2):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self.recent = collections.deque()
        self.window = window
        self.stopped = False

    def handed(self, size_bytes: int) -> None:
        self.recent.append(size_bytes)
        if len(self.recent) > self.window:
            self.recent.popleft()

    def held_bytes(self) -> int:
        return sum(self.recent)

    def ahead(self) -> int:
        """Blocks handed over that the consumer has not taken yet (a prefetch queue's)."""
        return 0

    def wait_for_consumer(self, timeout: float) -> None:
        """Until the consumer takes a block, or ``timeout``: what frees the budget held ahead of it."""

    def held_blocks(self) -> int:
        return len(self.recent)


class Executor:
    """Runs a physical plan; iterate ``run()`` for (block_ref, BlockMetadata) in order.

    ``progress`` (optional) is told of the execution as it goes: ``progress.update(executor)`` after
    every scheduling pass (it decides how often to draw), ``progress.finish(executor, error)`` once at
    the end, whatever way it ends. Both are called in the thread that iterates ``run()`` (the
    consumer's, or its prefetch thread).
    """

    def __init__(self, root: PhysicalOp, ctx: DataContext | None = None, progress=None, ledger=None):
        self.ctx = ctx or DataContext.get_current()
        self.ledger = ledger if ledger is not None else ConsumerLedger()
        self.root_op = root
        self.progress = progress
        self.stats = ExecutionStats()
        self.states = []
        self._remote_fns = {}

    def _build(self, op: PhysicalOp, cpus: float) -> OpState:
        upstream = [self._build(child, cpus) for child in op.inputs]
        state = OpState(op, upstream, self.ctx, cpus)
        self.states.append(state)
        self.stats.ops.append(state.stats)
        return state

    def _budget(self) -> int:
        limit = self.ctx.execution_options.resource_limits.object_store_memory
        if limit is not None:
            return int(limit)
        store = cluster_resources().get("object_store_memory", 2 * 2**30)
        return int(store * self.ctx.object_store_memory_fraction)

    def run(self):
        started = time.monotonic()
        cpus = cluster_resources().get("CPU", 1)
        root = self._build(self.root_op, cpus)
        self._check_pools(cpus)
        self.stats.budget = budget = self._budget()
        error = None
        try:
            while not self.ledger.stopped:
                before = self._progress()
                self._reap()
                for state in reversed(self.states):
                    state.pull()
                    self._launch(state, budget)
                self._account()
                if self.progress is not None:
                    self.progress.update(self)
                if root.outputs:
                    bundle = root.outputs.popleft()
                    self.ledger.handed(bundle[1].size_bytes)
                    yield bundle
                    bundle = None
                    continue
                if root.done():
                    return
                # A pass that moved blocks (a barrier that just ran, say) may enable the next one.
                if not self._wait_and_complete(stalled=self._progress() == before):
                    continue
        except BaseException as exc:
            # A consumer that stops early (take, schema) closes the generator: not a failure.
            if not isinstance(exc, GeneratorExit):
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise
        finally:
            self.stats.wall_seconds = time.monotonic() - started
            self._shutdown()
            if self.progress is not None:
                self.progress.finish(self, error)

    # -- launching ---------------------------------------------------------------------------------

    def _own(self) -> int:
        return sum(s.held_bytes() for s in self.states)

    def _held(self) -> int:
        return self._own() + self.ledger.held_bytes()

    def _account(self):
        self.stats.peak_bytes = max(self.stats.peak_bytes, self._held())
        blocks = sum(s.held_blocks() for s in self.states) + self.ledger.held_blocks()
        self.stats.peak_blocks = max(self.stats.peak_blocks, blocks)

    def _may_launch(self, state: OpState, est: int, budget: int) -> bool:
        if self._held() + est <= budget:
            return True
        # Liveness: an operator that consumes upstream blocks may always run one task (its inputs
        # are already counted, and finishing it frees them); a source may start only when the
        # executor itself holds nothing (the consumer's blocks free only when it gets the next) and
        # none wait fetched for the consumer (those free as it takes them).
        if state.op.read is None:
            return not state.running
        return self._own() == 0 and not self.ledger.ahead()

    def _launch(self, state: OpState, budget: int):
        kind = state.op.kind
        state.throttled = False
        if kind == "limit":
            self._launch_limit(state)
        elif kind == "union":
            while state.inputs:
                bundle, _ = state.inputs.popleft()
                state.finished[state.next_seq] = bundle
                state.next_seq += 1
            state.release()
        elif kind == "barrier":
            if state.fn is None and state.inputs_done() and not any(u.outputs for u in state.upstream):
                for seq, bundle in enumerate(state.op.fn(state.groups)):
                    state.finished[seq] = bundle
                state.groups = [[] for _ in state.upstream]
                state.next_seq = len(state.finished)
                state.fn = "ran"
                state.release()
        elif kind == "map":
            if state.pool is not None:
                self._scale_pool(state, budget)
            while state.inputs and not state.stopped and state.has_slot():
                item, in_bytes = state.inputs[0]
                est = state.estimate(in_bytes)
                if not self._may_launch(state, est, budget):
                    state.throttled = True
                    state.stats.throttled += 1
                    break
                actor = None
                if state.pool is not None:
                    actor = self._pick_actor(state)
                    if actor is None:
                        break
                state.inputs.popleft()
                self._submit(state, item, in_bytes, est, actor)

    def _submit(self, state, item, in_bytes, est, actor):
        op = state.op
        arg = item[0] if isinstance(item, tuple) else item
        columns = op.read.columns if op.read is not None else None
        limit = op.read.limit if op.read is not None else None
        if actor is not None:
            method = actor.handle.process.options(num_returns=2, name=op.name)
            block_ref, meta_ref = method.remote(arg, columns, limit, state.next_seq)
            actor.inflight += 1
        else:
            fn = self._remote_fns.get(id(op))
            if fn is None:
                stages = op.stages
                options = {"num_returns": 2, "name": op.name, **op.remote_args}

                if op.min_rows:

                    def _map_task(columns, limit, seq, *tables):
                        return run_group(stages, columns, limit, seq, *tables)

                else:

                    def _map_task(item, columns, limit, seq):
                        return run_block(stages, item, columns, limit, seq)

                fn = self._remote_fns[id(op)] = ember.remote(**options)(_map_task)
            if isinstance(arg, BlockGroup):
                block_ref, meta_ref = fn.remote(columns, limit, state.next_seq, *arg.refs)
            else:
                block_ref, meta_ref = fn.remote(arg, columns, limit, state.next_seq)
        state.running[meta_ref] = _Running(block_ref, state.next_seq, in_bytes, est, actor, time.monotonic())
        state.next_seq += 1
        state.stats.tasks += 1

    def _launch_limit(self, state: OpState):
        while state.inputs and not state.stopped:
            bundle, in_bytes = state.inputs.popleft()
            remaining = state.op.n - state.rows_passed
            rows = bundle[1].num_rows
            if rows <= remaining:
                state.finished[state.next_seq] = bundle
                state.next_seq += 1
                state.rows_passed += rows
            else:
                if _SLICE[0] is None:
                    _SLICE[0] = ember.remote(num_returns=2)(slice_block)
                block_ref, meta_ref = _SLICE[0].options(name=state.op.name).remote(bundle[0], remaining)
                state.running[meta_ref] = _Running(block_ref, state.next_seq, in_bytes, in_bytes)
                state.next_seq += 1
                state.rows_passed += remaining
            if state.rows_passed >= state.op.n:
                self._stop_upstream(state)
        state.release()

    def _stop_upstream(self, state: OpState):
        """The limit is met: nothing upstream needs to run any more."""
        state.inputs.clear()
        for up in state.upstream:
            self._stop(up)

    def _stop(self, state: OpState):
        state.stopped = True
        self._cancel(state)
        state.inputs.clear()
        state.outputs.clear()
        state.finished.clear()
        for up in state.upstream:
            self._stop(up)

    # -- actor pools -------------------------------------------------------------------------------

    def _check_pools(self, cpus: float) -> None:
        """A pool whose first actors take every CPU while an operator before it needs CPUs for its
        tasks would wait for ever (its inputs could never be made): refuse it at once, saying why."""
        for state in self.states:
            if state.pool is None:
                continue
            per_actor = state.op.remote_args.get("num_cpus", 1) or 0
            held = state.pool.min_size * per_actor
            if held < cpus or not any(_runs_tasks(up) for up in state.upstream):
                continue
            raise ValueError(
                f"{state.op.name}: its actor pool starts {state.pool.min_size} actor(s) with num_cpus={per_actor:g} "
                f"each, every one of the cluster's {cpus:g} CPUs, while the operators before it need CPUs for their "
                "tasks: nothing could feed the pool. Give its actors fewer CPUs (num_cpus=0.5), start fewer "
                "(concurrency=(1, n)), or use a cluster with more CPUs."
            )

    def _new_actor(self, state: OpState):
        op = state.op
        args = dict(op.remote_args)
        args.setdefault("num_cpus", 1)
        args.setdefault("max_restarts", 2)
        args.setdefault("max_task_retries", 2)
        # A name lets cleanup find an actor whose creation an interrupt cut short (no handle came back).
        args["name"] = name = f"ember-data-pool-{uuid.uuid4().hex}"
        state.creating.add(name)
        cls = ember.remote(**args)(PoolWorker)
        handle = cls.remote(op.stages)
        state.actors.append(_Actor(handle, handle.ready.remote()))
        state.creating.discard(name)
        state.stats.actors_started += 1
        state.stats.max_actors = max(state.stats.max_actors, len(state.actors))

    def _scale_pool(self, state: OpState, budget: int):
        pool, per_actor = state.pool, self.ctx.max_tasks_in_flight_per_actor
        if not state.pool_started and not state.stopped:
            state.pool_started = True
            for _ in range(pool.min_size):
                self._new_actor(state)
            state.stats.min_actors = pool.min_size
        busy = all(a.inflight >= per_actor for a in state.actors if a.ready)
        pending = any(not a.ready for a in state.actors)
        if state.inputs and busy and not pending and len(state.actors) < pool.max_size:
            if self._may_launch(state, state.estimate(state.inputs[0][1]), budget):
                self._new_actor(state)
        if state.inputs_done() and not state.inputs and self.ctx.actor_pool_idle_scale_down:
            # No more work will come: actors free their resources as soon as they are idle.
            for actor in [a for a in state.actors if a.inflight == 0]:
                ember.kill(actor.handle)
                state.actors.remove(actor)
                state.stats.actors_killed_idle += 1

    def _pick_actor(self, state: OpState):
        ready = [a for a in state.actors if a.ready and a.inflight < self.ctx.max_tasks_in_flight_per_actor]
        return min(ready, key=lambda a: a.inflight) if ready else None

    # -- completion --------------------------------------------------------------------------------

    def _progress(self) -> tuple:
        return tuple((len(s.inputs), len(s.outputs), len(s.running), s.next_seq, s.fn) for s in self.states)

    def _reap(self):
        """Take in the tasks that finished since the last pass, without waiting. While the consumer
        still has blocks to take, the loop never reaches the blocking wait; without this, finished
        tasks would keep their slots meanwhile and the workers would go idle."""
        waiting = {ref: state for state in self.states for ref in state.running}
        if not waiting:
            return
        try:
            ready, _ = ember.wait(list(waiting), num_returns=len(waiting), timeout=0, fetch_local=False)
            self._finish_ready(ready, waiting)
        except BaseException:
            waiting = ready = _ = None  # noqa: F841 (as in _wait_and_complete: a kept traceback pins nothing)
            raise

    def _wait_and_complete(self, stalled: bool) -> bool:
        waiting = {}
        for state in self.states:
            for ref in state.running:
                waiting[ref] = state
            for actor in state.actors:
                if not actor.ready:
                    waiting[actor.ready_ref] = (state, actor)
        if not waiting and not stalled:
            return False
        if not waiting and self.ledger.ahead():
            self.ledger.wait_for_consumer(self.ledger.poll_seconds)  # the budget is in the prefetch queue
            return True
        if not waiting:
            detail = "; ".join(
                f"{s.op.name}: {len(s.inputs)} queued, {len(s.outputs)} out, done={s.done()}" for s in self.states
            )
            raise RuntimeError(f"ember.data executor stalled: nothing is running and nothing can start ({detail})")
        refs = list(waiting)
        ready = []
        try:
            ready, _ = ember.wait(refs, num_returns=1, timeout=self.ledger.poll_seconds, fetch_local=False)
            if ready:
                ready, _ = ember.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            self._finish_ready(ready, waiting)
        except BaseException:
            # A traceback kept by a notebook (or pytest) keeps these frames: they must not pin blocks.
            waiting = refs = ready = _ = None  # noqa: F841
            raise
        return True

    def _finish_ready(self, ready, waiting):
        ref = owner = None
        try:
            for ref in ready:
                owner = waiting[ref]
                if isinstance(owner, tuple):
                    state, actor = owner
                    try:
                        ember.get(actor.ready_ref)  # a constructor that raised fails the execution here
                    except ember.exceptions.TaskError as error:
                        error.function_name = f"{state.op.name}: {fn_label(state)} constructor"
                        raise error.with_traceback(None) from None
                    actor.ready = True
                    continue
                self._complete(owner, ref)
        except BaseException:
            ready = waiting = ref = owner = actor = None  # noqa: F841
            raise

    def _complete(self, state: OpState, meta_ref):
        record = state.running.pop(meta_ref)
        if record.actor is not None:
            record.actor.inflight -= 1
        try:
            meta = ember.get(meta_ref)
        except ember.exceptions.TaskError as error:
            if state.op.name not in str(getattr(error, "function_name", "")):
                error.function_name = f"{state.op.name}: {error.function_name}"
            # The traceback a notebook keeps must not pin blocks: drop the frames that hold refs
            # (the remote traceback is in the message).
            record = meta_ref = None  # noqa: F841
            raise error.with_traceback(None) from None
        state.stats.task_seconds += time.monotonic() - record.started
        state.out_sizes.append(meta.size_bytes)
        if not state.stopped:
            state.finished[record.seq] = (record.block_ref, meta)
            state.release()

    # -- cleanup -----------------------------------------------------------------------------------

    def _cancel(self, state: OpState):
        for ref, record in list(state.running.items()):
            if record.actor is None:
                try:
                    ember.cancel(ref)
                except Exception:
                    pass
        state.running.clear()
        for actor in state.actors:
            try:
                ember.kill(actor.handle)
            except Exception:
                pass
        state.actors.clear()
        for name in list(state.creating):
            try:
                ember.kill(ember.get_actor(name))
            except Exception:
                pass
        state.creating.clear()

    def _shutdown(self):
        for state in self.states:
            self._cancel(state)
            state.inputs.clear()
            state.finished.clear()
            state.outputs.clear()
            state.groups = [[] for _ in state.upstream]


_SLICE = [None]


def _runs_tasks(state: OpState) -> bool:
    """Whether an operator needs CPUs for tasks of its own (in-memory inputs and pools do not)."""
    op = state.op
    return op.kind == "map" and state.pool is None and (op.remote_args.get("num_cpus", 1) or 0) > 0
