"""How many of this machine's CPUs sat idle over a stretch of time, from ``/proc/stat``.

The node manager reads the meter when it defers a worker-pool top-up and again when the deferral
ends; the :class:`~ember.runtime.node.scheduler.LeaseScheduler` decides with the figure whether a
worker's start would take a CPU from running work (see ``LeaseScheduler.topup_due``).
"""

import os


class IdleMeter:
    """Idle CPUs between two readings of the machine's CPU counters (``/proc/stat``, Linux).

    ``read()`` returns an opaque reading; ``idle_cpus(reading)`` the average number of CPUs that
    were idle (or waiting for I/O) from that reading until now. Both return None where the counters
    cannot be read: the caller then decides as if it could not tell.
    """

    def __init__(self, path: str = "/proc/stat"):
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def read(self) -> tuple[int, int] | None:
        """(idle ticks, all ticks) summed over the CPUs, or None."""
        if self._fd is None:
            return None
        try:
            # The first line: "cpu  user nice system idle iowait irq softirq steal guest guest_nice".
            fields = os.pread(self._fd, 256, 0).split(b"\n", 1)[0].split()
            ticks = [int(value) for value in fields[1:9]]  # guest time is counted in user time already
        except (OSError, ValueError):
            return None
        if len(ticks) < 5:
            return None
        return ticks[3] + ticks[4], sum(ticks)

    def idle_cpus(self, since: tuple[int, int] | None) -> float | None:
        """The average number of idle CPUs from ``since`` (a ``read()``) until now, or None."""
        now = self.read()
        if since is None or now is None or now[1] <= since[1]:
            return None
        cpus = os.cpu_count() or 1
        return cpus * (now[0] - since[0]) / (now[1] - since[1])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
