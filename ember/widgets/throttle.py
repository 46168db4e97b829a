"""At most ``rate`` updates a second, and never a lost one: the widgets' refresh policy.

A plain class with an injectable clock, so the policy is unit-tested without threads or time.
"""

import time


class Throttle:
    """Coalesces changes into updates no closer than ``period`` seconds apart.

    ``note()`` says something changed; ``due(now)`` says how long until an update may go out (None
    when nothing changed); ``take(now)`` returns True (and starts a new period) when one should go
    out now. A change noted during a period is never dropped: it goes out when the period ends.
    """

    def __init__(self, period: float = 0.1, clock=time.monotonic):
        self.period = period
        self.clock = clock
        self.dirty = False
        self.last = float("-inf")

    def note(self) -> None:
        self.dirty = True

    def due(self, now: float | None = None) -> float | None:
        if not self.dirty:
            return None
        now = self.clock() if now is None else now
        return max(0.0, self.last + self.period - now)

    def take(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        if not self.dirty or now < self.last + self.period:
            return False
        self.dirty = False
        self.last = now
        return True
