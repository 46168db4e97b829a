"""What one execution did: per-operator counters and the peak the budget saw (``Dataset.stats()``)."""

from dataclasses import dataclass, field


@dataclass
class OpStats:
    name: str
    tasks: int = 0
    blocks_out: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    task_seconds: float = 0.0
    actors_started: int = 0
    actors_killed_idle: int = 0
    max_actors: int = 0
    min_actors: int | None = None
    throttled: int = 0  # scheduling passes in which the budget held back a task this operator could run


@dataclass
class ExecutionStats:
    """What one execution did; ``peak_bytes``/``peak_blocks`` are the most it held in flight."""

    budget: int = 0
    peak_bytes: int = 0
    peak_blocks: int = 0
    wall_seconds: float = 0.0
    ops: list = field(default_factory=list)

    def op(self, prefix: str) -> OpStats:
        for stats in self.ops:
            if stats.name.startswith(prefix) or prefix in stats.name:
                return stats
        raise KeyError(prefix)

    def summary(self) -> str:
        lines = []
        for s in self.ops:
            line = f"Operator {s.name}: {s.tasks} tasks, {s.blocks_out} blocks, {s.rows_out} rows, {_fmt(s.bytes_out)}"
            if s.actors_started:
                line += f", actors {s.min_actors or 0}..{s.max_actors} ({s.actors_started} started)"
            lines.append(line)
        lines.append(
            f"Execution: {self.wall_seconds:.2f} s, peak in flight {self.peak_blocks} blocks / "
            f"{_fmt(self.peak_bytes)} of a {_fmt(self.budget)} budget"
        )
        return "\n".join(lines)


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
