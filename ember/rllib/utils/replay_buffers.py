"""A uniform replay buffer of transitions and an epsilon schedule: plain numpy, no I/O."""

import numpy as np


class ReplayBuffer:
    """The last ``capacity`` transitions (obs, actions, rewards, next_obs, terminateds), in ring arrays."""

    KEYS = ("obs", "actions", "rewards", "next_obs", "terminateds")

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"replay buffer capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.columns: dict = {}
        self.next = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, transitions: dict) -> None:
        """Append flat transitions (each column [B, ...]); the oldest are overwritten when full."""
        count = len(transitions["rewards"])
        if not self.columns:
            for key in self.KEYS:
                value = np.asarray(transitions[key])
                self.columns[key] = np.zeros((self.capacity, *value.shape[1:]), value.dtype)
        positions = (self.next + np.arange(count)) % self.capacity
        for key in self.KEYS:
            self.columns[key][positions] = transitions[key]
        self.next = int((self.next + count) % self.capacity)
        self.size = min(self.capacity, self.size + count)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        """``batch_size`` transitions drawn uniformly, with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = rng.integers(0, self.size, batch_size)
        return {key: column[index] for key, column in self.columns.items()}

    def get_state(self) -> dict:
        return {"capacity": self.capacity, "columns": self.columns, "next": self.next, "size": self.size}

    def set_state(self, state: dict) -> None:
        self.capacity, self.columns, self.next, self.size = (
            state["capacity"],
            state["columns"],
            state["next"],
            state["size"],
        )


def piecewise_schedule(points, timestep: int) -> float:
    """The value at ``timestep`` of a schedule given as [(timestep, value), ...]: linear between the
    points, the first value before them and the last after (RLlib's ``epsilon=[(0, 1.0), (10000, 0.05)]``)."""
    if isinstance(points, (int, float)):
        return float(points)
    points = sorted((int(t), float(v)) for t, v in points)
    if timestep <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if timestep < t1:
            return v0 + (v1 - v0) * (timestep - t0) / (t1 - t0)
    return points[-1][1]
