"""``@ember.remote`` on a function: a RemoteFunction, invoked with ``.remote()``."""

import functools
import hashlib
import inspect

from ember import options as opts
from ember.connection import connected_client
from ember.runtime.serialization import dumps_function


class RemoteFunction:
    """A function that runs as a task on the cluster. Call ``f.remote(*args)`` to get ObjectRef(s)."""

    def __init__(self, function, options: dict):
        self._function = function
        options = dict(options)
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            options.setdefault("num_returns", "streaming")  # a generator task, as in Ray
        self._options = opts.validate(options, opts.TASK_OPTIONS, "remote functions")
        try:
            self._signature = inspect.signature(function)
        except (TypeError, ValueError):
            self._signature = None
        self._positional = _positional_counts(self._signature)
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        self._pickled = None
        functools.update_wrapper(self, function)

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running '{self._name}()', "
            f"try '{self._name}.remote()'."
        )

    def remote(self, *args, **kwargs):
        """Run the function as a task; returns an ObjectRef (a list for num_returns > 1)."""
        return self._remote(args, kwargs, self._options)

    def options(self, **task_options):
        """A copy of this function with some options overridden for the calls made through it."""
        merged = opts.validate({**self._options, **task_options}, opts.TASK_OPTIONS, "remote functions")
        parent = self

        class _Bound:
            def remote(self, *args, **kwargs):
                return parent._remote(args, kwargs, merged)

        return _Bound()

    def _export(self, client) -> bytes:
        if self._pickled is None:
            payload = dumps_function(self._function)
            self._pickled = (b"fn:" + hashlib.sha1(payload).digest(), payload)
        key, payload = self._pickled
        client.export(key, payload)
        return key

    def _remote(self, args, kwargs, options: dict):
        positional = self._positional
        if positional is not None and not kwargs and positional[0] <= len(args) <= positional[1]:
            pass  # a call that binds: what bind() would accept, without its cost on every call
        elif self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)  # wrong arguments fail here, as in Ray, not at get()
            except TypeError as error:
                raise TypeError(f"{self._name}.remote(): {error}") from None
        client = connected_client()
        key = self._export(client)
        num_returns = options.get("num_returns", 1)
        resources, _, strategy, placement_group = opts.scheduling_of(options, opts.resources_of(options, 1))
        refs = client.submitter.submit_task(
            key,
            options.get("name") or self._name,
            args,
            kwargs,
            num_returns=num_returns,
            resources=resources,
            max_retries=options.get("max_retries", 3),
            retry_exceptions=options.get("retry_exceptions", False),
            runtime_env=client.runtime_envs.for_submission(options.get("runtime_env")),
            max_calls=options.get("max_calls", 0),
            strategy=strategy,
            placement_group=placement_group,
            task_events=options.get("enable_task_events", True),
        )
        if num_returns == 1 or num_returns == "dynamic":
            return refs[0]
        if num_returns == 0:
            return None
        return refs


def _positional_counts(signature) -> tuple[int, int] | None:
    """(fewest, most) positional arguments a call without keywords may pass, for a signature of plain
    parameters only (no ``*args``, no keyword-only ones); None for any other signature."""
    if signature is None:
        return None
    required = 0
    parameters = signature.parameters.values()
    for parameter in parameters:
        if parameter.kind is not parameter.POSITIONAL_OR_KEYWORD and parameter.kind is not parameter.POSITIONAL_ONLY:
            return None
        if parameter.default is parameter.empty:
            required += 1
    return required, len(parameters)
