"""RLlib's import path of ``DefaultModelConfig``."""

from ember.rllib.algorithms.algorithm_config import DefaultModelConfig

__all__ = ["DefaultModelConfig"]
