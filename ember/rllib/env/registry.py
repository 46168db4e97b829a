"""Named environment creators, as ``ray.tune.registry.register_env``.

A creator is shipped (cloudpickled) to the env runners with the algorithm's config, so nothing has
to be looked up by name on a worker: registering in the driver is enough.
"""

_CREATORS: dict = {}


def register_env(name: str, env_creator) -> None:
    """Register ``env_creator(env_config) -> env`` under ``name``, for ``config.environment(env=name)``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_env: the name must be a non-empty string, got {name!r}")
    if not callable(env_creator):
        raise TypeError(f"register_env: the creator of {name!r} must be callable, got {type(env_creator).__name__}")
    _CREATORS[name] = env_creator


def registered_creator(name: str):
    """The creator registered under ``name``, or None."""
    return _CREATORS.get(name)
