"""The algorithms: ``from ember.rllib.algorithms.ppo import PPOConfig``."""
