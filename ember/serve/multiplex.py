"""``@serve.multiplexed``: a replica keeps up to ``max_num_models_per_replica`` models loaded, the
least recently used one leaving when another must load; routers prefer replicas that have the
requested model (replicas report their models with their metrics)."""

import asyncio
import collections
import functools
import inspect
import weakref

_loaded: weakref.WeakSet = weakref.WeakSet()


class _ModelCache:
    def __init__(self, loader, owner, capacity: int):
        self.loader, self.owner, self.capacity = loader, owner, capacity
        self.models: collections.OrderedDict = collections.OrderedDict()
        self.loading: dict = {}
        _loaded.add(self)

    async def get(self, model_id: str):
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        pending = self.loading.get(model_id)
        if pending is None:
            pending = self.loading[model_id] = asyncio.get_running_loop().create_task(self._load(model_id))
        return await asyncio.shield(pending)

    async def _load(self, model_id: str):
        try:
            while len(self.models) >= self.capacity:
                _, model = self.models.popitem(last=False)
                del model
            result = self.loader(self.owner, model_id) if self.owner is not None else self.loader(model_id)
            if inspect.isawaitable(result):
                result = await result
            self.models[model_id] = result
            return result
        finally:
            self.loading.pop(model_id, None)


def loaded_model_ids() -> list:
    """The models loaded in this process (what the replica reports for routing)."""
    return sorted({model_id for cache in list(_loaded) for model_id in cache.models})


def multiplexed(_func=None, *, max_num_models_per_replica: int = 3):
    """Decorate a model loader ``async def get_model(self, model_id)``: it loads each model once and
    keeps the ``max_num_models_per_replica`` most recently used ones."""
    if (
        isinstance(max_num_models_per_replica, bool)
        or not isinstance(max_num_models_per_replica, int)
        or (max_num_models_per_replica < 1 and max_num_models_per_replica != -1)
    ):
        raise ValueError(
            f"max_num_models_per_replica must be a positive int or -1, got {max_num_models_per_replica!r}."
        )
    capacity = max_num_models_per_replica if max_num_models_per_replica > 0 else 1 << 30

    def decorate(loader):
        parameters = list(inspect.signature(loader).parameters)
        is_method = bool(parameters) and parameters[0] == "self"
        # The cache lives on the instance (or the wrapper): the decorated class must stay picklable.
        attribute = f"_serve_models_{loader.__name__}"

        def cache_for(owner):
            holder = owner if owner is not None else function_wrapper
            cache = getattr(holder, attribute, None)
            if cache is None:
                cache = _ModelCache(loader, owner, capacity)
                setattr(holder, attribute, cache)
            return cache

        if is_method:

            @functools.wraps(loader)
            async def method_wrapper(self, model_id: str):
                return await cache_for(self).get(model_id)

            return method_wrapper

        @functools.wraps(loader)
        async def function_wrapper(model_id: str):
            return await cache_for(None).get(model_id)

        return function_wrapper

    if _func is not None:
        return decorate(_func)
    return decorate
