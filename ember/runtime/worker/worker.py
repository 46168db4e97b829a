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
event loop thread. Replies from those threads reach the socket through an outbox and a wake pipe.
Concurrency groups (``concurrency_groups={"io": 2}``) give each group its own pool of threads (its own
semaphore for an async actor); calls that name no group use the default one, of ``max_concurrency``.
"""

import collections
import inspect
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import zmq

from ember import exceptions
from ember.runtime import protocol, transport
from ember.runtime.client.core_client import CoreClient, set_current_client
from ember.runtime.client.ownership import INLINE_LIMIT
from ember.runtime.client.task_submitter import Arg
from ember.runtime.ids import return_object_id
from ember.runtime.serialization import deserialize, serialize, serialize_error
from ember.runtime.service import read_eof, unwrap
from ember.runtime.task_context import ActorExit, TaskContext, current_task

# Generator tasks whose values go back one by one as they are yielded. A "dynamic" task's owner
# gathers them into one DynamicObjectRefGenerator when the task ends; its own return is object 1,
# so its values are numbered from 2.
STREAMED = ("streaming", "dynamic")


class _Cancelled(BaseException):
    """Raised inside a task's thread by ember.cancel; a BaseException so user code rarely swallows it."""


class LogStream:
    """Replaces sys.stdout / sys.stderr: whole lines go to the driver, prefixed with the task's name."""

    def __init__(self, name: str, client: CoreClient, original):
        self.name = name
        self.client = client
        self.original = original
        self.partial = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self.partial, "text", "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            self.client.log_line(self.name, line)
        self.partial.text = rest
        self.original.write(text)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self):
        return self.original.encoding


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
        self.outbox: collections.deque = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.actor = None
        self.actor_name = ""
        self.actor_context = None
        self.executor = None
        self.loop = None
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
            self.loop.call_soon_threadsafe(task.cancel)
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
        sys.stdout = LogStream("stdout", self.client, sys.__stdout__)
        sys.stderr = LogStream("stderr", self.client, sys.__stderr__)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if self.wake_r in events:
                read_eof(self.wake_r)
                while self.outbox:
                    self.socket.send_multipart(self.outbox.popleft(), copy=False)
                if self.exit_after_reply:
                    self._exit()
            if self.socket in events:
                while True:
                    try:
                        frames = unwrap(self.socket.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
                    try:
                        self.handle(frames)
                    except (Exception, _Cancelled) as error:  # a bad message must not kill the worker
                        print(f"ember worker: dropped a bad message: {error!r}", file=sys.__stderr__)
                    if self.exit_after_reply:
                        self._exit()

    def _exit(self) -> None:
        """Leave after the last reply went out (max_calls, or an actor's __ray_terminate__)."""
        sys.stdout.flush()
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
        identity = frames[0]
        header, payload = protocol.decode(frames[1:])
        handler = self.table.get(header.get("op"))
        if handler is None:
            # Perhaps meant for a process that had our port before us: answer rather than drop.
            if header.get("rid") is not None:
                error = {
                    "op": protocol.ERROR,
                    "rid": header["rid"],
                    "error": f"a worker's task socket got {header.get('op')!r}",
                }
                self.socket.send_multipart([identity, *protocol.encode(error)])
            raise ValueError(f"unknown op {header.get('op')!r}")
        reply = handler(identity, header, payload)
        if reply is not None:
            self.socket.send_multipart([identity, *reply], copy=False)

    def send_later(self, identity: bytes, reply: list) -> None:
        """From another thread: queue a reply for the main thread to send."""
        self.outbox.append([identity, *reply])
        os.write(self.wake_w, b"x")

    # --- arguments and results ------------------------------------------------------------------
    def resolve_args(self, header: dict, frames: list):
        if "argobj" in header:
            oid, node_id = header["argobj"]
            args, kwargs = self.client.read_stored(oid, node_id)
        else:
            nbuf = header.get("nbuf", 0)
            args, kwargs = deserialize(frames[0], frames[1 : 1 + nbuf])
        refs = header.get("refs")
        if not refs:
            return args, kwargs
        values = {}
        from ember.runtime.client.object_ref import ObjectRef

        for entry in refs:
            key, kind = entry[0], entry[1]
            if kind == "v":
                start, count = entry[2], entry[3]
                values[key] = deserialize(frames[start], frames[start + 1 : start + 1 + count])
            elif kind == "s":
                values[key] = self.client.read_stored(entry[2], entry[3])
            else:
                values[key] = self.client.get([ObjectRef(entry[2], entry[3], self.client)])[0]
        args = tuple(values[a.key] if type(a) is Arg else a for a in args)
        if kwargs:
            kwargs = {k: values[v.key] if type(v) is Arg else v for k, v in kwargs.items()}
        return args, kwargs

    def pack_value(self, header: dict, index: int, value) -> tuple[list, list]:
        """(descriptor, frames) of one return value: inline frames, or a location in the store."""
        data, buffers, contained = serialize(value, f"return value {index - 1}")
        pairs = self.client.pin_returned_refs(contained, header["owner"]) if contained else []
        size = len(data) + sum(b.nbytes for b in buffers)
        if size <= INLINE_LIMIT:
            return ["v", len(buffers), size, pairs], [data, *buffers]
        node_id = self.client.store_put(
            return_object_id(header["rid"], index), data, buffers, header["owner_id"], header.get("owner_node")
        )
        return ["s", size, node_id, pairs], []

    def pack_returns(self, header: dict, result) -> list:
        task_id = header["rid"]
        num_returns = header["nret"]
        if num_returns == 1:
            values = [result]
        elif num_returns == 0:
            values = []
        else:
            values = list(result) if isinstance(result, (tuple, list)) or inspect.isgenerator(result) else None
            if values is None or len(values) != num_returns:
                raise ValueError(
                    f"{header['tname']} declared num_returns={num_returns} but returned "
                    f"{type(result).__name__} {'of length ' + str(len(values)) if values else ''}".rstrip()
                )
        rets, frames = [], []
        for index, value in enumerate(values, start=1):
            ret, value_frames = self.pack_value(header, index, value)
            rets.append(ret)
            frames += value_frames
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": task_id, "rets": rets}, frames)

    def error_reply(self, header: dict, error: BaseException, name: str) -> list:
        if isinstance(error, ActorExit):
            # exit_actor(): this call fails like every later one, and the head stops us for good.
            cause = "The actor exited by calling exit_actor()."
            error = exceptions.ActorDiedError(cause, self.actor_context.actor_id.hex())
            error.__traceback__ = None
            already, self.exited = self.exited, cause
            if already:
                return self.exited_reply(header)
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
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": header["rid"], "err": True}, frames)

    # --- normal tasks -----------------------------------------------------------------------------
    def _context(self, header: dict, actor_id=None) -> TaskContext:
        assigned = header.get("res") or {}
        return TaskContext(
            task_id=header["rid"],
            name=header.get("tname", ""),
            job_id=header.get("job"),
            actor_id=actor_id,
            assigned=assigned,
            gpu_ids=header.get("gpus") or [],
            holds_cpu=assigned.get("CPU", 0) > 0,
            borrowed=[],
            output_tag=header.get("tag"),
            placement_group=header.get("pg"),
        )

    def execute_task(self, identity: bytes, header: dict, frames: list) -> list:
        task_id = header["rid"]
        if self.retiring:
            return protocol.encode({"op": protocol.TASK_RESULT, "rid": task_id, "rejected": True})
        name = header.get("tname", "task")
        context = self._context(header)
        token = current_task.set(context)
        restore = _nothing
        try:
            restore = self._apply_env(self._env_of(header), context.gpu_ids)
            function = self.client.load_function(header["fid"], header.get("job"))
            args, kwargs = self.resolve_args(header, frames)
            result = self.run_user_code(task_id, function, *args, **kwargs)
            if header["nret"] in STREAMED:
                reply = self.stream(identity, header, result)
            else:
                reply = self.pack_returns(header, result)
        except BaseException as error:  # noqa: B902 - the task's failure is the caller's to see
            reply = self.error_reply(header, error, name)
        finally:
            self.cancel_requested.discard(task_id)
            restore()
            current_task.reset(token)
        self.client.flush_borrows(context.borrowed)
        max_calls = header.get("max_calls") or 0
        if max_calls:
            self.calls_by_function[header["fid"]] += 1
            if self.calls_by_function[header["fid"]] >= max_calls:
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

    def stream(self, identity: bytes, header: dict, generator) -> list:
        """Send each value the generator yields as it comes; the final reply says how many there were."""
        count = 0
        iterator = iter(generator)
        while True:
            try:
                value = self.run_user_code(header["rid"], next, iterator)
            except StopIteration:
                break
            count += 1
            self._send_stream_item(identity, header, count, value)
        return self._stream_end(header, count)

    async def stream_async(self, identity: bytes, header: dict, generator) -> list:
        count = 0
        async for value in generator:
            count += 1
            self._send_stream_item(identity, header, count, value)
        return self._stream_end(header, count)

    def _send_stream_item(self, identity: bytes, header: dict, index: int, value) -> None:
        ret, frames = self.pack_value(header, index + (header["nret"] == "dynamic"), value)
        message = protocol.encode(
            {"op": protocol.STREAM_ITEM, "rid": header["rid"], "idx": index - 1, "ret": ret}, frames
        )
        if threading.current_thread() is threading.main_thread():
            self.socket.send_multipart([identity, *message], copy=False)
        else:
            self.send_later(identity, message)

    @staticmethod
    def _stream_end(header: dict, count: int) -> list:
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": header["rid"], "rets": [], "stream_end": count})

    def _env_of(self, header: dict) -> dict:
        """The job's runtime_env variables, overridden by the task's or actor's own."""
        env = dict(self.client.job_config(header["job"])["env_vars"]) if header.get("job") else {}
        env.update(header.get("env") or {})
        return env

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
    def create_actor(self, identity: bytes, header: dict, frames: list) -> list:
        name = header.get("class_name", "Actor")
        self.actor_name = name
        context = self._context(header, actor_id=header["actor_id"])
        context.name = name
        context.holds_cpu = False
        self.actor_context = context
        context.actor_info = (header["actor_id"], name, header.get("meta") or {})
        current_task.set(context)
        try:
            self._apply_env(self._env_of(header), context.gpu_ids)  # for the actor's whole life
            cls = self.client.load_function(header["cid"], header.get("job"))
            args, kwargs = self.resolve_args(header, frames)
            is_async = any(
                inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
                for _, m in inspect.getmembers(cls, inspect.isfunction)
            )
            max_concurrency = header.get("max_concurrency") or (1000 if is_async else 1)
            groups = header.get("concurrency_groups") or {}
            if is_async:
                import asyncio

                self.loop = asyncio.new_event_loop()
                self.semaphore = asyncio.Semaphore(max_concurrency)
                self.group_semaphores = {group: asyncio.Semaphore(limit) for group, limit in groups.items()}
                threading.Thread(target=self.loop.run_forever, name="ember-actor-loop", daemon=True).start()
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
            return self.error_reply(header, error, f"{name}.__init__")
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": header["rid"], "rets": []})

    def exited_reply(self, header: dict) -> list:
        """A call that reached us after exit_actor(), before the head stopped this process."""
        error = exceptions.ActorDiedError(self.exited, self.actor_context.actor_id.hex())
        frames = [serialize_error(error, header.get("method", "call"), os.getpid())]
        return protocol.encode({"op": protocol.TASK_RESULT, "rid": header["rid"], "err": True}, frames)

    def actor_call(self, identity: bytes, header: dict, frames: list):
        if self.exited:
            return self.exited_reply(header)
        group = header.get("cgroup")
        if group is not None and group not in self.group_executors and group not in self.group_semaphores:
            error = ValueError(f"The actor {self.actor_name} has no concurrency group {group!r}.")
            return self.error_reply(header, error, f"{self.actor_name}.{header['method']}")
        if self.loop is not None:
            import asyncio

            self.async_tasks[header["rid"]] = asyncio.run_coroutine_threadsafe(
                self._run_async_call(identity, header, frames), self.loop
            )
            return None
        if self.executor is not None:
            executor = self.group_executors.get(group, self.executor)
            executor.submit(lambda: self.send_later(identity, self._run_call(identity, header, frames)))
            return None
        return self._run_call(identity, header, frames)

    def _method(self, header: dict):
        method_name = header["method"]
        if method_name == "__ray_ready__":
            return lambda: True
        if method_name == "__ray_terminate__":
            self.exit_after_reply = True  # see _exit: the head is told first, so it does not restart us
            return lambda: None
        return getattr(self.actor, method_name)

    def _call_context(self, header: dict) -> TaskContext:
        context = self._context(header, actor_id=self.actor_context.actor_id)
        context.name = self.actor_name
        context.assigned = self.actor_context.assigned
        context.gpu_ids = self.actor_context.gpu_ids
        context.actor_info = self.actor_context.actor_info
        context.placement_group = self.actor_context.placement_group  # its calls' tasks may join its group
        context.holds_cpu = False
        return context

    def _run_call(self, identity: bytes, header: dict, frames: list) -> list:
        task_id = header["rid"]
        context = self._call_context(header)
        token = current_task.set(context)
        try:
            args, kwargs = self.resolve_args(header, frames)
            result = self.run_user_code(task_id, self._method(header), *args, **kwargs)
            if header["nret"] in STREAMED:
                reply = self.stream(identity, header, result)
            else:
                reply = self.pack_returns(header, result)
        except BaseException as error:
            reply = self.error_reply(header, error, f"{self.actor_name}.{header['method']}")
        finally:
            self.cancel_requested.discard(task_id)
            current_task.reset(token)
        self.client.flush_borrows(context.borrowed)
        return reply

    async def _run_async_call(self, identity: bytes, header: dict, frames: list) -> None:
        import asyncio

        context = self._call_context(header)
        current_task.set(context)
        try:
            async with self.group_semaphores.get(header.get("cgroup"), self.semaphore):
                args, kwargs = (
                    await asyncio.get_running_loop().run_in_executor(None, self.resolve_args, header, frames)
                    if header.get("refs")
                    else self.resolve_args(header, frames)
                )
                result = self._method(header)(*args, **kwargs)
                if header["nret"] in STREAMED:
                    reply = (
                        await self.stream_async(identity, header, result)
                        if hasattr(result, "__aiter__")
                        else self.stream(identity, header, result)
                    )
                else:
                    if inspect.isawaitable(result):
                        result = await result
                    reply = self.pack_returns(header, result)
        except BaseException as error:
            reply = self.error_reply(header, error, f"{self.actor_name}.{header['method']}")
        finally:
            self.async_tasks.pop(header["rid"], None)
        if context.borrowed:
            await asyncio.get_running_loop().run_in_executor(None, self.client.flush_borrows, context.borrowed)
        self.send_later(identity, reply)
        if self.exit_after_reply:
            os.write(self.wake_w, b"x")


def _nothing() -> None:
    pass


def _with(reply: list, **fields) -> list:
    header, frames = protocol.decode(reply)
    header.update(fields)
    return protocol.encode(header, frames)


def main() -> None:
    worker = Worker()
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
