"""``@ember.remote`` on a class: an ActorClass; ``.remote()`` starts an actor and gives an ActorHandle."""

import hashlib
import inspect
import logging
import pickle

import msgspec

from ember import options as opts
from ember.connection import connected_client
from ember.runtime import protocol
from ember.runtime.client.core_client import current_client
from ember.runtime.ids import new_id
from ember.runtime.message_fields import MethodOptions
from ember.runtime.messages import Error
from ember.runtime.serialization import dumps_function
from ember.runtime.task_context import ActorExit, current_task

logger = logging.getLogger(__name__)


def method(**method_options):
    """Decorate an actor method to set its defaults, as Ray's ``@ray.method``.

    Options: ``num_returns`` (an int, ``"streaming"`` or ``"dynamic"``), ``concurrency_group`` (one of
    the groups given by ``@ember.remote(concurrency_groups=...)`` on the class), ``max_task_retries``
    and ``retry_exceptions`` (retry the call when the actor dies, or when it raises one of these
    exceptions), ``enable_task_events`` (False: the calls are left out of the task events, so of the
    widgets, ``ember.util.state`` and ``ember.timeline``), ``name``, and ``tensor_transport``, accepted
    for compatibility: only ``"object_store"`` (the default), as Ember has no GPU tensor transport.
    ``.options(...)`` on a call overrides the same names.
    """
    opts.validate(dict(method_options), opts.METHOD_OPTIONS, "ember.method")

    def decorate(function):
        function.__ember_method_options__ = dict(method_options)
        return function

    return decorate


def _method_meta(cls) -> dict:
    """Each method's defaults: its num_returns ("streaming" for generators, else 1), or a dict of the
    options @ember.method set (num_returns among them) when there are others."""
    meta = {}
    for name, member in inspect.getmembers(cls, lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
        default = "streaming" if inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member) else 1
        options = getattr(member, "__ember_method_options__", {})
        num_returns = options.get("num_returns", default)
        extra = {k: v for k, v in options.items() if k not in ("num_returns", "tensor_transport")}
        if extra:
            # Exception classes cannot cross msgpack (the head keeps meta): they are the caller's to
            # apply, so they go as pickled bytes, decoded by ActorHandle.
            if isinstance(extra.get("retry_exceptions"), (list, tuple)):
                extra["retry_exceptions"] = dumps_function(list(extra["retry_exceptions"]))
            meta[name] = {"num_returns": num_returns, **extra}
        else:
            meta[name] = num_returns
    return meta


class ActorClass:
    """A class whose instances run as actors. ``Cls.remote(*args)`` creates one."""

    def __init__(self, cls, options: dict):
        self._cls = cls
        self._options = opts.validate(dict(options), opts.ACTOR_OPTIONS, "actors")
        self._name = cls.__name__
        self._pickled = None
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._name}()', use '{self._name}.remote()'."
        )

    def remote(self, *args, **kwargs) -> "ActorHandle":
        """Create the actor; returns its handle at once (calls queue until it is ready)."""
        return self._remote(args, kwargs, self._options)

    def options(self, **actor_options):
        """A copy of this class with some options overridden for the actors created through it."""
        merged = opts.validate({**self._options, **actor_options}, opts.ACTOR_OPTIONS, "actors")
        parent = self

        class _Bound:
            def remote(self, *args, **kwargs):
                return parent._remote(args, kwargs, merged)

        return _Bound()

    def _remote(self, args, kwargs, options: dict) -> "ActorHandle":
        client = connected_client()
        if self._pickled is None:
            payload = dumps_function(self._cls)
            self._pickled = (b"cls:" + hashlib.sha1(payload).digest(), payload)
        key, payload = self._pickled
        try:
            inspect.signature(self._cls).bind(*args, **kwargs)  # wrong arguments fail here, as in Ray
        except TypeError as error:
            raise TypeError(f"{self._name}.remote(): {error}") from None
        except ValueError:
            pass  # no signature to check against
        client.export(key, payload)
        placement = opts.resources_of(options, 1)
        running = opts.resources_of(options, 0) if "num_cpus" not in options else placement
        placement, running, strategy, placement_group = opts.scheduling_of(options, placement, running)
        meta = _method_meta(self._cls)
        name = options.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"An actor's name must be a non-empty string, got {name!r}.")
        namespace = options.get("namespace") or client.current_namespace()
        max_task_retries = options.get("max_task_retries", 0)
        actor_id = new_id(16)
        spec = {
            "class_name": self._name,
            "name": name,
            "namespace": namespace,
            "detached": options.get("lifetime") == "detached",
            "get_if_exists": bool(options.get("get_if_exists")),
            "max_restarts": options.get("max_restarts", 0),
            "max_task_retries": max_task_retries,
            "max_concurrency": options.get("max_concurrency"),
            "concurrency_groups": options.get("concurrency_groups"),
            "resources": placement,
            "running": running,
            "strategy": strategy,
            "pg": placement_group,
            "renv": client.runtime_envs.for_submission(options.get("runtime_env")) or None,
            "owner_actor": getattr(current_task.get(), "actor_id", None),  # its fate follows that actor's
            "meta": meta,
        }
        existing = client.submitter.create_actor(actor_id, key, args, kwargs, spec)
        if existing is not None:
            return ActorHandle(existing.actor_id, existing.class_name, existing.meta or {}, max_task_retries)
        return ActorHandle(actor_id, self._name, meta, max_task_retries, original=True)


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(*args)`` calls a method; handles can be passed
    to tasks and other actors and keep working there."""

    def __init__(self, actor_id: bytes, class_name: str, meta: dict, max_task_retries: int = 0, original: bool = False):
        self._actor_id = actor_id
        self._class_name = class_name
        self._meta = meta or {}
        self._max_task_retries = max_task_retries
        self._original = original
        self._escaped = False

    def __getattr__(self, name: str):
        if name.startswith("_") and name not in ("__ray_ready__", "__ray_terminate__") and name not in self._meta:
            raise AttributeError(name)
        if self._meta and name not in self._meta and name not in ("__ray_ready__", "__ray_terminate__"):
            raise AttributeError(f"'{self._class_name}' actor has no method '{name}'")
        entry = self._meta.get(name, 1)
        if isinstance(entry, MethodOptions):  # as the head describes the actor
            entry = {key: value for key, value in msgspec.structs.asdict(entry).items() if value is not None}
        if isinstance(entry, dict):
            defaults = dict(entry)
            num_returns = defaults.pop("num_returns", 1)
            if isinstance(defaults.get("retry_exceptions"), bytes):
                defaults["retry_exceptions"] = pickle.loads(defaults["retry_exceptions"])
            return ActorMethod(self, name, num_returns, defaults)
        return ActorMethod(self, name, entry)

    def __reduce__(self):
        self._escaped = True  # another process may hold it now: only the job's end kills the actor
        return ActorHandle, (self._actor_id, self._class_name, self._meta, self._max_task_retries)

    def __del__(self):
        if self._original and not self._escaped:
            try:
                current_client(required=False).submitter.release_actor(self._actor_id)
            except Exception:
                pass

    def __repr__(self):
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)


class ActorMethod:
    """A method of an actor; call it with ``.remote()``."""

    def __init__(self, handle: ActorHandle, name: str, num_returns, options: dict | None = None):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._options = options or {}

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running 'actor.{self._name}()', "
            f"try 'actor.{self._name}.remote()'."
        )

    def remote(self, *args, **kwargs):
        """Call the method on the actor; returns ObjectRef(s) of its result."""
        options = self._options
        num_returns = options.get("num_returns", self._num_returns)
        handle = self._handle
        refs = connected_client().submitter.submit_actor_task(
            handle._actor_id,
            self._name,
            args,
            kwargs,
            num_returns=num_returns,
            max_task_retries=options.get("max_task_retries", handle._max_task_retries),
            name=options.get("name") or f"{handle._class_name}.{self._name}",
            retry_exceptions=options.get("retry_exceptions", False),
            concurrency_group=options.get("concurrency_group"),
            task_events=options.get("enable_task_events", True),
        )
        if num_returns == 1 or num_returns == "dynamic":
            return refs[0]
        if num_returns == 0:
            return None
        return refs

    def options(self, **method_options):
        """This method with some options overridden for one call: the names ``@ember.method`` takes
        (``num_returns``, ``concurrency_group``, ``max_task_retries``, ``retry_exceptions``,
        ``enable_task_events``, ``name``, ``tensor_transport``)."""
        opts.validate(method_options, opts.METHOD_OPTIONS, "actor methods")
        return ActorMethod(self._handle, self._name, self._num_returns, {**self._options, **method_options})


def exit_actor() -> None:
    """Stop the current actor for good, from inside one of its methods: that call and every later
    one fail with ActorDiedError, and the actor is not restarted (as Ray's ``exit_actor``)."""
    context = current_task.get()
    if context is None or context.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor method.")
    raise ActorExit()


def handle_from_info(info) -> ActorHandle:
    """A handle built from the head's description of an actor (an ``ActorPublic``, see ``get_actor``)."""
    return ActorHandle(info.actor_id, info.class_name or "Actor", info.meta or {})


def kill(handle: ActorHandle, no_restart: bool = True) -> None:
    """Kill an actor at once (its process gets SIGKILL): pending and future calls raise
    ActorDiedError. With ``no_restart=False`` an actor with restarts left is restarted instead."""
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"ember.kill() expects an actor handle, got {type(handle).__name__}.")
    connected_client().request(
        "head", {"op": protocol.KILL_ACTOR, "actor_id": handle._actor_id, "no_restart": no_restart}
    )


def kill_nowait(handle: ActorHandle, no_restart: bool = True) -> None:
    """Kill an actor as ``kill`` does, without waiting for the head's answer (Ray's ``ray.kill``
    does not wait either: its core worker sends the kill to the GCS and returns). For a caller that
    will not call the actor again, such as Tune ending a finished trial's actor: the next actor it
    creates goes to the head after the kill on the same connection, so the head frees the killed
    actor's resources before it places the new one. A failed kill is logged, not raised."""
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"ember.kill() expects an actor handle, got {type(handle).__name__}.")
    client = connected_client()
    actor_id = handle._actor_id

    def on_reply(reply, frames):
        # An actor the head has forgotten or never had is as dead as the kill would make it.
        if isinstance(reply, Error) and "no such actor" not in (reply.error or ""):
            logger.warning("could not kill actor %s: %s", actor_id.hex(), reply.error)

    header = {"op": protocol.KILL_ACTOR, "actor_id": actor_id, "no_restart": no_restart}
    client.call_soon(client.send, "head", header, (), on_reply)
