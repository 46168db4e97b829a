"""A worker process: runs tasks, or hosts one actor, for the owners that lease it.

Data flow::

    owners / callers --execute_task, actor_call--> task socket (ROUTER, main thread) --> run the function
    head ------------create_actor_instance-------> task socket                           |
    owners <---------task_result, stream_item----- task socket <-------------------------+
    node manager <---worker_ready, blocked, logs-- core client (I/O thread), which also serves cancel
    stdin (pipe from the node manager): EOF means the node manager is gone, so we exit

Normal tasks and the calls of a plain actor run on the main thread, one at a time, in arrival order
(one connection per caller keeps each caller's calls in submission order). Threaded actors
(``max_concurrency > 1``) run calls on a thread pool; async actors run them as coroutines on an
event loop thread. Replies from those threads reach the socket through an outbox that the main
thread's :class:`~ember.runtime.service.EventLoop` flushes (``call_soon``). Requests are validated
against the ``worker`` schema where they enter (a :class:`~ember.runtime.service.Dispatcher`), and
refused when they do not fit what this worker is: a worker that hosts an actor runs no tasks and no
second actor, and a worker without an actor takes no actor calls.
Concurrency groups (``concurrency_groups={"io": 2}``) give each group its own pool of threads (its own
semaphore for an async actor); calls that name no group use the default one, of ``max_concurrency``.
"""

import collections
import inspect
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec

from ember import exceptions
from ember.runtime import local_link, protocol, transport
from ember.runtime.client.core_client import CoreClient, set_current_client
from ember.runtime.client.ownership import INLINE_LIMIT
from ember.runtime.client.task_submitter import Arg
from ember.runtime.ids import return_object_id
from ember.runtime.serialization import deserialize, serialize, serialize_error
from ember.runtime.service import Dispatcher, EventLoop, SpinPolicy
from ember.runtime.task_context import ActorExit, TaskContext, current_task
from ember.runtime.worker.log_stream import LogStream

# Generator tasks whose values go back one by one as they are yielded. A "dynamic" task's owner
# gathers them into one DynamicObjectRefGenerator when the task ends; its own return is object 1,
# so its values are numbered from 2.
STREAMED = ("streaming", "dynamic")

logger = logging.getLogger(__name__)


class _Cancelled(BaseException):
    """Raised inside a task's thread by ember.cancel; a BaseException so user code rarely swallows it."""


class Worker:
    handlers = {
        protocol.EXECUTE_TASK: "execute_task",
        protocol.ACTOR_CALL: "actor_call",
        protocol.CREATE_ACTOR_INSTANCE: "create_actor",
    }

    def __init__(self):
        self.table = {op: getattr(self, name) for op, name in self.handlers.items()}
        set_current_client(None)
        host = os.environ.get("EMBER_NODE_HOST", "127.0.0.1")
        self.client = CoreClient(
            os.environ["EMBER_HEAD"],
            os.environ["EMBER_NODE_MANAGER"],
            kind="worker",
            watch_stdin=True,
            host=host,
            node_id=bytes.fromhex(os.environ["EMBER_NODE_ID"]),
        )
        set_current_client(self.client)
        self.client.cancel_handler = self.cancel
        self.client.exit_allowed = lambda: self.running_task is None and self.actor is None
        self.socket, self.address = transport.bind_router(host)
        self.dispatcher = Dispatcher(self.table, self._send_header, "worker", "worker", send_frames=self._send)
        self.loop = EventLoop()
        # The next call of a caller that waits for each reply comes a driver's round after ours.
        self.loop.spin = SpinPolicy.from_environment()
        self.loop.add_socket(self.socket, self.handle)
        # Owners on this machine send calls over a local link (a Unix socket, see local_link) when
        # we take them: no ZeroMQ I/O thread on either side of a synchronous call.
        self.links: dict = {}  # the identity we gave a local link -> the link
        self._link_count = 0
        self._listener = None
        if local_link.enabled():
            path = transport.local_link_path(self.address)
            if path is not None:
                self._listener = local_link.listen(path)
                self.loop.add_fd(self._listener.fileno(), self._accept_links)
        self.outbox: collections.deque = collections.deque()  # replies from other threads, in order
        self.actor = None
        self.actor_name = ""
        self.actor_context = None
        self.executor = None
        self.async_loop = None  # an async actor's asyncio loop, on its own thread
        self.semaphore = None
        self.group_executors: dict = {}  # concurrency group -> its thread pool (threaded actors)
        self.group_semaphores: dict = {}  # concurrency group -> its semaphore (async actors)
        self.async_tasks: dict = {}
        self.calls_by_function: collections.Counter = collections.Counter()
        self.running_task: bytes | None = None
        self.cancel_requested: set = set()
        self.retiring = False
        self.exit_after_reply = False
        self.exited = ""  # why the actor left by exit_actor(): later calls fail with it
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def _on_sigint(self, signum, frame):
        # ember.cancel interrupts the running task with SIGINT; any other SIGINT (say, Ctrl-C in the
        # terminal that started the driver) is not for us.
        if self.running_task is not None and self.running_task in self.cancel_requested:
            raise _Cancelled()

    def cancel(self, task_id: bytes, recursive: bool) -> None:
        """Called on the client's I/O thread when an owner cancels a task sent to us."""
        self.cancel_requested.add(task_id)
        if recursive:
            self.client.submitter.cancel_children(task_id)
        task = self.async_tasks.get(task_id)
        if task is not None:
            self.async_loop.call_soon_threadsafe(task.cancel)
        elif self.running_task == task_id:
            os.kill(os.getpid(), signal.SIGINT)

    # --- main loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        self.client.connect()
        reply, _ = self.client.request(
            "node_manager",
            {
                "op": protocol.WORKER_READY,
                "wid": self.client.client_id,
                "pid": os.getpid(),
                "addr": self.address,
                "caddr": self.client.address,
            },
        )
        if reply.preload:
            self.loop.call_soon(self._preload, reply.preload)
        sys.stdout = LogStream("stdout", self.client, sys.__stdout__)
        sys.stderr = LogStream("stderr", self.client, sys.__stderr__)
        self.loop.run()  # until _exit, or the process is stopped

    def _preload(self, classes: list) -> None:
        """Load the classes of the actors lately created on this node, while idle in the pool: the next
        actor of one of them (a Tune trial's, say) skips the fetch and the imports of its class."""
        for cid, job in classes:
            if self.actor_context is not None or self.running_task is not None:
                return  # leased meanwhile: what it runs loads what it needs
            try:
                self.client.load_function(cid, job)
            except Exception as error:  # noqa: BLE001 - only a head start; the creation reports errors
                logging.getLogger(__name__).info("could not load class %s ahead: %s", cid.hex(), error)

    def _exit(self) -> None:
        """Leave after the last reply went out (max_calls, or an actor's __ray_terminate__)."""
        sys.stdout.flush()
        for link in list(self.links.values()):
            link.flush_blocking()
        if self.actor_context is not None:
            # A graceful exit, not a crash: the head must not restart the actor.
            try:
                self.client.request(
                    "head",
                    {
                        "op": protocol.KILL_ACTOR,
                        "actor_id": self.actor_context.actor_id,
                        "no_restart": True,
                        "cause": "The actor was terminated by __ray_terminate__.",
                    },
                    timeout=5,
                )
            except Exception:
                pass  # the head is gone: nothing would restart us anyway
        self.client.shutdown()
        os._exit(0)

    def handle(self, frames: list) -> None:
        """One request from the task socket (on the main thread, which runs the loop)."""
        try:
            self.dispatcher.dispatch(frames[0], frames[1:])
        except _Cancelled:  # a cancellation that arrived after its task ended: nothing to interrupt
            logger.warning("a late cancellation interrupted the worker's loop")
        if self.exit_after_reply:
            self._exit()  # before anything pipelined behind the last call runs

    def _accept_links(self, fd: int) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                logger.warning("could not accept a local link: %s", error)
                return
            self._link_count += 1
            # Longer than the 5-byte identities a ROUTER gives its peers, so never one of theirs.
            identity = b"\x00local-link-%d" % self._link_count
            link = local_link.Link(conn, lambda frames, identity=identity: self.handle([identity, *frames]))
            link.address = identity
            link.on_closed = self._link_closed
            self.links[identity] = link
            self.loop.add_link(link)

    def _link_closed(self, link) -> None:
        self.loop.remove_fd(link.fd)
        self.links.pop(link.address, None)

    def _send(self, identity: bytes, reply: list) -> None:
        """Send an encoded message to the caller ``identity`` (on the main thread)."""
        link = self.links.get(identity)
        if link is not None:
            link.send_multipart(reply)
        else:
            self.socket.send_multipart([identity, *reply], copy=False)

    def _send_header(self, identity: bytes, header: dict, frames=()) -> None:
        self._send(identity, protocol.encode(header, frames))

    def _refuse(self, identity: bytes, msg, why: str) -> None:
        """Answer a request this worker must not run with an error: its state stays as it was."""
        logger.warning("refused %s %s from %r: %s", msg.__struct_config__.tag, msg.rid.hex(), identity, why)
        self.dispatcher.reply_error(identity, msg.rid, ValueError(f"refused by worker {os.getpid()}: {why}"))

    def send_later(self, identity: bytes, reply: list) -> None:
        """From another thread: queue a reply for the main thread to send."""
        self.outbox.append((identity, reply))
        self.loop.call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        # One flush sends every reply queued so far; the calls queued with them find the outbox empty.
        while self.outbox:
            self._send(*self.outbox.popleft())
        if self.exit_after_reply:
            self._exit()

    # --- arguments and results ------------------------------------------------------------------
    def resolve_args(self, msg, frames: list):
        if msg.argobj is not None:
            oid, node_id = msg.argobj
            args, kwargs = self.client.read_stored(oid, node_id)
        else:
            args, kwargs = deserialize(frames[0], frames[1 : 1 + msg.nbuf])
        if not msg.refs:
            return args, kwargs
        values = {}
        from ember.runtime.client.object_ref import ObjectRef

        for ref in msg.refs:
            if ref.kind == "v":  # where: its first payload frame, what: how many buffers follow
                values[ref.key] = deserialize(frames[ref.where], frames[ref.where + 1 : ref.where + 1 + ref.what])
            elif ref.kind == "s":  # where: the object id, what: the node whose store holds it
                values[ref.key] = self.client.read_stored(ref.where, ref.what)
            else:  # borrowed: where is the object id, what its owner's address
                values[ref.key] = self.client.get([ObjectRef(ref.where, ref.what, self.client)])[0]
        args = tuple(values[a.key] if type(a) is Arg else a for a in args)
        if kwargs:
            kwargs = {k: values[v.key] if type(v) is Arg else v for k, v in kwargs.items()}
        return args, kwargs

    def pack_value(self, msg, index: int, value) -> tuple[list, list]:
        """(descriptor, frames) of one return value: inline frames, or a location in the store."""
        data, buffers, contained = serialize(value, f"return value {index - 1}")
        pairs = self.client.pin_returned_refs(contained, msg.owner) if contained else []
        size = len(data) + sum(b.nbytes for b in buffers)
        if size <= INLINE_LIMIT:
            return ["v", len(buffers), size, pairs], [data, *buffers]
        node_id = self.client.store_put(return_object_id(msg.rid, index), data, buffers, msg.owner_id, msg.owner_node)
        return ["s", size, node_id, pairs], []

    def pack_returns(self, msg, result, ran: float | None = None) -> list:
        num_returns = msg.nret
        if num_returns == 1:
            values = [result]
        elif num_returns == 0:
            values = []
        else:
            values = list(result) if isinstance(result, (tuple, list)) or inspect.isgenerator(result) else None
            if values is None or len(values) != num_returns:
                raise ValueError(
                    f"{msg.tname} declared num_returns={num_returns} but returned "
                    f"{type(result).__name__} {'of length ' + str(len(values)) if values else ''}".rstrip()
                )
        rets, frames = [], []
        for index, value in enumerate(values, start=1):
            ret, value_frames = self.pack_value(msg, index, value)
            rets.append(ret)
            frames += value_frames
        header = {"op": protocol.TASK_RESULT, "rid": msg.rid, "rets": rets}
        if ran is not None:
            header["ran"] = ran
        return protocol.encode(header, frames)

    def error_reply(self, msg, error: BaseException, name: str) -> list:
        if isinstance(error, ActorExit):
            # exit_actor(): this call fails like every later one, and the head stops us for good.
            cause = "The actor exited by calling exit_actor()."
            error = exceptions.ActorDiedError(cause, self.actor_context.actor_id.hex())
            error.__traceback__ = None
            already, self.exited = self.exited, cause
            if already:
                return self.exited_reply(msg)
            self.client.call_soon(
                self.client.send,
                "head",
                {
                    "op": protocol.KILL_ACTOR,
                    "actor_id": self.actor_context.actor_id,
                    "no_restart": True,
                    "cause": cause,
                },
            )
        asyncio = sys.modules.get("asyncio")  # imported only by async actors (start-up time)
        cancelled = (_Cancelled, KeyboardInterrupt) + ((asyncio.CancelledError,) if asyncio else ())
        if isinstance(error, cancelled):
            error = exceptions.TaskCancelledError(f"Task {name} was cancelled.")
            error.__traceback__ = None
        frames = [serialize_error(error, name, os.getpid())]
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": msg.rid, "err": True}, frames)

    # --- normal tasks -----------------------------------------------------------------------------
    def execute_task(self, identity: bytes, msg, frames: list) -> list | None:
        task_id = msg.rid
        if self.actor_context is not None:
            # Its lease is the actor's for life: a task here would share the actor's process and
            # could end it (max_calls), and the head would not restart an actor that exited cleanly.
            return self._refuse(identity, msg, f"it hosts the actor {self.actor_name}")
        if self.retiring:
            return protocol.encode({"op": protocol.TASK_RESULT, "rid": task_id, "rejected": True})
        name = msg.tname or "task"
        assigned = msg.res
        context = TaskContext(
            task_id=task_id,
            name=msg.tname,
            job_id=msg.job,
            assigned=assigned,
            gpu_ids=msg.gpus,
            holds_cpu=assigned.get("CPU", 0) > 0,
            borrowed=[],
            output_tag=msg.tag,
            placement_group=_placement(msg.pg),
        )
        token = current_task.set(context)
        restore = _nothing
        started = time.perf_counter()
        try:
            restore = self._apply_env(None, context.gpu_ids)
            function = self.client.load_function(msg.fid, msg.job)
            args, kwargs = self.resolve_args(msg, frames)
            result = self.run_user_code(task_id, function, *args, **kwargs)
            if msg.nret in STREAMED:
                reply = self.stream(identity, msg, result)
            else:
                reply = self.pack_returns(msg, result, time.perf_counter() - started)
        except BaseException as error:  # noqa: B902 - the task's failure is the caller's to see
            reply = _with(self.error_reply(msg, error, name), ran=time.perf_counter() - started)
        finally:
            self.cancel_requested.discard(task_id)
            restore()
            current_task.reset(token)
        self.client.flush_borrows(context.borrowed)
        if msg.max_calls:
            self.calls_by_function[msg.fid] += 1
            if self.calls_by_function[msg.fid] >= msg.max_calls:
                # Finish this reply, refuse what was pipelined behind it, then exit.
                self.retiring = True
                reply = _with(reply, retire=True)
                self.exit_after_reply = True
        return reply

    def run_user_code(self, task_id: bytes, function, *args, **kwargs):
        """Call user code where ember.cancel may interrupt it (its SIGINT reaches the main thread
        only while this runs, never while a reply is being built or sent)."""
        if threading.current_thread() is not threading.main_thread():
            return function(*args, **kwargs)
        self.running_task = task_id
        try:
            if task_id in self.cancel_requested:  # cancelled before it started
                raise _Cancelled()
            return function(*args, **kwargs)
        finally:
            self.running_task = None

    def stream(self, identity: bytes, msg, generator) -> list:
        """Send each value the generator yields as it comes; the final reply says how many there were."""
        count = 0
        iterator = iter(generator)
        while True:
            try:
                value = self.run_user_code(msg.rid, next, iterator)
            except StopIteration:
                break
            count += 1
            self._send_stream_item(identity, msg, count, value)
        return self._stream_end(msg, count)

    async def stream_async(self, identity: bytes, msg, generator) -> list:
        count = 0
        async for value in generator:
            count += 1
            self._send_stream_item(identity, msg, count, value)
        return self._stream_end(msg, count)

    def _send_stream_item(self, identity: bytes, msg, index: int, value) -> None:
        ret, frames = self.pack_value(msg, index + (msg.nret == "dynamic"), value)
        message = protocol.encode({"op": protocol.STREAM_ITEM, "rid": msg.rid, "idx": index - 1, "ret": ret}, frames)
        if threading.current_thread() is threading.main_thread():
            self._send(identity, message)
        else:
            self.send_later(identity, message)

    @staticmethod
    def _stream_end(msg, count: int) -> list:
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": msg.rid, "rets": [], "stream_end": count})

    @staticmethod
    def _apply_env(env_vars, gpu_ids):
        changes = dict(env_vars or {})
        if gpu_ids:
            changes["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        if not changes:
            return _nothing
        saved = {name: os.environ.get(name) for name in changes}
        os.environ.update({k: str(v) for k, v in changes.items()})

        def restore():
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        return restore

    # --- actors -------------------------------------------------------------------------------------
    def create_actor(self, identity: bytes, msg, frames: list) -> list | None:
        if self.actor_context is not None:
            return self._refuse(identity, msg, f"it hosts the actor {self.actor_name} already")
        name = msg.class_name
        self.actor_name = name
        # The lease's resources come as ``assigned`` (``res`` is a task's field): what
        # get_runtime_context().get_assigned_resources() shows inside the actor and its calls.
        context = TaskContext(
            task_id=msg.rid,
            name=name,
            job_id=msg.job,
            actor_id=msg.actor_id,
            assigned=msg.assigned,
            gpu_ids=msg.gpus,
            holds_cpu=False,
            borrowed=[],
            actor_info=(msg.actor_id, name, _plain_meta(msg.meta)),
            placement_group=_placement(msg.pg),
            output_tag=msg.tag,
        )
        self.actor_context = context
        current_task.set(context)
        try:
            self._apply_env(None, context.gpu_ids)  # for the actor's whole life
            cls = self.client.load_function(msg.cid, msg.job)
            args, kwargs = self.resolve_args(msg, frames)
            is_async = any(
                inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
                for _, m in inspect.getmembers(cls, inspect.isfunction)
            )
            max_concurrency = msg.max_concurrency or (1000 if is_async else 1)
            groups = msg.concurrency_groups or {}
            if is_async or max_concurrency > 1 or groups:
                # Calls run on other threads, which need the GIL that a spinning loop keeps taking.
                if self.loop.spin is not None:
                    self.loop.spin.close()
                    self.loop.spin = None
            if is_async:
                import asyncio

                self.async_loop = asyncio.new_event_loop()
                self.semaphore = asyncio.Semaphore(max_concurrency)
                self.group_semaphores = {group: asyncio.Semaphore(limit) for group, limit in groups.items()}
                threading.Thread(target=self.async_loop.run_forever, name="ember-actor-loop", daemon=True).start()
            elif max_concurrency > 1 or groups:
                # With groups, even a default group of one runs on its own thread: a call waiting
                # in one group must not hold up the others.
                self.executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="ember-actor")
                self.group_executors = {
                    group: ThreadPoolExecutor(limit, thread_name_prefix=f"ember-actor-{group}")
                    for group, limit in groups.items()
                }
            self.actor = cls.__new__(cls)
            self.actor.__init__(*args, **kwargs)
        except BaseException as error:
            return self.error_reply(msg, error, f"{name}.__init__")
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": msg.rid, "rets": []})

    def exited_reply(self, msg) -> list:
        """A call that reached us after exit_actor(), before the head stopped this process."""
        error = exceptions.ActorDiedError(self.exited, self.actor_context.actor_id.hex())
        frames = [serialize_error(error, getattr(msg, "method", "call"), os.getpid())]
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": msg.rid, "err": True}, frames)

    def actor_call(self, identity: bytes, msg, frames: list):
        if self.actor_context is None:
            return self._refuse(identity, msg, "it hosts no actor")
        if self.exited:
            return self.exited_reply(msg)
        group = msg.cgroup
        if group is not None and group not in self.group_executors and group not in self.group_semaphores:
            error = ValueError(f"The actor {self.actor_name} has no concurrency group {group!r}.")
            return self.error_reply(msg, error, f"{self.actor_name}.{msg.method}")
        if self.async_loop is not None:
            import asyncio

            self.async_tasks[msg.rid] = asyncio.run_coroutine_threadsafe(
                self._run_async_call(identity, msg, frames), self.async_loop
            )
            return None
        if self.executor is not None:
            executor = self.group_executors.get(group, self.executor)
            executor.submit(lambda: self.send_later(identity, self._run_call(identity, msg, frames)))
            return None
        return self._run_call(identity, msg, frames)

    def _method(self, msg):
        method_name = msg.method
        if method_name == "__ray_ready__":
            return lambda: True
        if method_name == "__ray_terminate__":
            self.exit_after_reply = True  # see _exit: the head is told first, so it does not restart us
            return lambda: None
        return getattr(self.actor, method_name)

    def _call_context(self, msg) -> TaskContext:
        actor = self.actor_context
        return TaskContext(
            task_id=msg.rid,
            name=self.actor_name,
            job_id=msg.job,
            actor_id=actor.actor_id,
            assigned=actor.assigned,
            gpu_ids=actor.gpu_ids,
            holds_cpu=False,
            borrowed=[],
            actor_info=actor.actor_info,
            placement_group=actor.placement_group,  # its calls' tasks may join its group
            output_tag=msg.tag,
        )

    def _run_call(self, identity: bytes, msg, frames: list) -> list:
        task_id = msg.rid
        context = self._call_context(msg)
        token = current_task.set(context)
        # From here, not from when the call arrived: the time it queued behind others is not its own.
        started = time.perf_counter()
        try:
            args, kwargs = self.resolve_args(msg, frames)
            result = self.run_user_code(task_id, self._method(msg), *args, **kwargs)
            if msg.nret in STREAMED:
                reply = self.stream(identity, msg, result)
            else:
                reply = self.pack_returns(msg, result, time.perf_counter() - started)
        except BaseException as error:
            reply = self.error_reply(msg, error, f"{self.actor_name}.{msg.method}")
            reply = _with(reply, ran=time.perf_counter() - started)
        finally:
            self.cancel_requested.discard(task_id)
            current_task.reset(token)
        self.client.flush_borrows(context.borrowed)
        return reply

    async def _run_async_call(self, identity: bytes, msg, frames: list) -> None:
        import asyncio

        context = self._call_context(msg)
        current_task.set(context)
        try:
            async with self.group_semaphores.get(msg.cgroup, self.semaphore):
                started = time.perf_counter()
                args, kwargs = (
                    await asyncio.get_running_loop().run_in_executor(None, self.resolve_args, msg, frames)
                    if msg.refs
                    else self.resolve_args(msg, frames)
                )
                result = self._method(msg)(*args, **kwargs)
                if msg.nret in STREAMED:
                    reply = (
                        await self.stream_async(identity, msg, result)
                        if hasattr(result, "__aiter__")
                        else self.stream(identity, msg, result)
                    )
                else:
                    if inspect.isawaitable(result):
                        result = await result
                    # An async call shares the loop with others while it awaits: its time, not its CPU.
                    reply = self.pack_returns(msg, result, time.perf_counter() - started)
        except BaseException as error:
            reply = self.error_reply(msg, error, f"{self.actor_name}.{msg.method}")
        finally:
            self.async_tasks.pop(msg.rid, None)
        if context.borrowed:
            await asyncio.get_running_loop().run_in_executor(None, self.client.flush_borrows, context.borrowed)
        self.send_later(identity, reply)


def _nothing() -> None:
    pass


def _placement(pg):
    """A task's PlacementInfo in the list form TaskContext keeps (options.scheduling_of and
    get_current_placement_group read it by position, as the submitter sends it)."""
    return None if pg is None else [pg.group, pg.index, pg.capture]


def _plain_meta(meta: dict) -> dict:
    """Method metadata as ActorHandle takes it (a handle made inside the actor, through
    get_runtime_context().current_actor): MethodOptions become the dicts the creator sent."""
    return {
        name: entry if isinstance(entry, (int, str)) else msgspec.to_builtins(entry, builtin_types=(bytes,))
        for name, entry in meta.items()
    }


def _with(reply: list, **fields) -> list:
    """Our own encoded reply with ``fields`` added (rare: a max_calls worker's last reply)."""
    header, frames = protocol.decode(reply)
    header.update(fields)
    return protocol.encode(header, frames)


def main() -> None:
    # Refused messages and failed handlers go to this worker's log file, never to the driver's
    # console through sys.stderr (which becomes a LogStream once the worker runs).
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.__stderr__,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    # A runtime env's working_dir and py_modules come first on sys.path (the node unpacked them).
    paths = os.environ.get("EMBER_RUNTIME_ENV_PATHS")
    if paths:
        sys.path[:0] = [p for p in paths.split(os.pathsep) if p not in sys.path]
    worker = Worker()
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
