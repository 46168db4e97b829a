"""Pure numpy pieces of the algorithms: advantages and episode statistics (no I/O, no torch)."""

import math
from collections import deque

import numpy as np


def compute_gae(rewards, values, next_values, terminateds, truncateds, gamma: float, lambda_: float) -> tuple:
    """Generalised advantage estimates for time-major [T, N] arrays; returns (advantages, value targets).

    ``values[t]`` estimates the state before step t and ``next_values[t]`` the state after it (zero
    where the episode terminated; the final observation's value where it was truncated, so a time
    limit is not mistaken for a terminal state). An episode end (terminated or truncated) stops the
    accumulation; the last step of the fragment bootstraps from ``next_values`` alone.
    """
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"compute_gae expects time-major [T, N] arrays, got shape {rewards.shape}")
    values = np.asarray(values, np.float64)
    next_values = np.where(terminateds, 0.0, np.asarray(next_values, np.float64))
    ended = np.asarray(terminateds, bool) | np.asarray(truncateds, bool)
    deltas = rewards + gamma * next_values - values
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lambda_ * np.where(ended[t], 0.0, running)
        advantages[t] = running
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)


def explained_variance(targets: np.ndarray, predictions: np.ndarray) -> float:
    """1 - Var(targets - predictions) / Var(targets): 1 is a perfect value function, <= 0 useless."""
    variance = float(np.var(targets))
    if variance == 0:
        return float("nan")
    return max(-1.0, 1.0 - float(np.var(targets - predictions)) / variance)


class EpisodeStats:
    """Episode returns and lengths over a sliding window (``metrics_num_episodes_for_smoothing``)
    plus lifetime counts: what a result dict's ``env_runners`` part reports."""

    def __init__(self, window: int = 100):
        self.returns: deque = deque(maxlen=window)
        self.lengths: deque = deque(maxlen=window)
        self.num_episodes_lifetime = 0
        self.num_env_steps_lifetime = 0

    def add(self, returns, lengths, num_env_steps: int) -> int:
        """Record the episodes that ended in one batch and the steps it took; returns how many ended."""
        returns, lengths = list(returns), list(lengths)
        if len(returns) != len(lengths):
            raise ValueError("episode returns and lengths differ in number")
        self.returns.extend(float(r) for r in returns)
        self.lengths.extend(int(n) for n in lengths)
        self.num_episodes_lifetime += len(returns)
        self.num_env_steps_lifetime += int(num_env_steps)
        return len(returns)

    def summary(self) -> dict:
        """Mean/min/max return and mean length over the window (NaN before the first episode ends)."""
        if not self.returns:
            nan = math.nan
            return {
                "episode_return_mean": nan,
                "episode_return_min": nan,
                "episode_return_max": nan,
                "episode_len_mean": nan,
            }
        returns = np.fromiter(self.returns, float)
        return {
            "episode_return_mean": float(returns.mean()),
            "episode_return_min": float(returns.min()),
            "episode_return_max": float(returns.max()),
            "episode_len_mean": float(np.mean(self.lengths)),
        }

    def get_state(self) -> dict:
        return {
            "returns": list(self.returns),
            "lengths": list(self.lengths),
            "window": self.returns.maxlen,
            "num_episodes_lifetime": self.num_episodes_lifetime,
            "num_env_steps_lifetime": self.num_env_steps_lifetime,
        }

    def set_state(self, state: dict) -> None:
        self.returns = deque(state["returns"], maxlen=state["window"])
        self.lengths = deque(state["lengths"], maxlen=state["window"])
        self.num_episodes_lifetime = state["num_episodes_lifetime"]
        self.num_env_steps_lifetime = state["num_env_steps_lifetime"]
