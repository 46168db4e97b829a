from ember.rllib.core.learner.learner import Learner
from ember.rllib.core.learner.learner_group import LearnerDiedError, LearnerGroup

__all__ = ["Learner", "LearnerDiedError", "LearnerGroup"]
