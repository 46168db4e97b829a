"""ember.rllib: RLlib's API (new stack) on Ember's core: env runner actors, a torch learner.

``import ember.rllib`` (or ``ember.rllib`` after ``import ember``) is light; torch loads with the
first algorithm module. Env runners never import torch: they act with a numpy copy of the policy.
"""

from ember.rllib.env.registry import register_env

__all__ = ["register_env"]
