"""``ray.tune.registry``: ``register_env`` names an environment creator for RLlib's
``config.environment(env=name)``. RLlib owns the registry; this module only forwards to it, loading
``ember.rllib`` on the first call so that importing Tune does not import RLlib."""


def register_env(name: str, env_creator) -> None:
    """Register ``env_creator(env_config) -> env`` under ``name``, as Ray's
    ``ray.tune.registry.register_env``; RLlib algorithms then accept ``env=name``."""
    from ember.rllib.env.registry import register_env as rllib_register_env

    rllib_register_env(name, env_creator)


__all__ = ["register_env"]
