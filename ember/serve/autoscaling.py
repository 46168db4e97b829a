"""Ray Serve's default autoscaling rule as a plain state machine (no clock of its own, no I/O).

Every control-loop pass gives it the total ongoing requests (running and queued, as the replicas and
handles last reported them) and the running replica count; it answers how many replicas there
should be. The wish to scale must hold for ``upscale_delay_s`` / ``downscale_delay_s`` before it is
acted on, and the load is averaged over ``look_back_period_s``.
"""

import collections
import math

from ember.serve.config import AutoscalingConfig


def desired_replicas(config: AutoscalingConfig, total_ongoing: float, current: int) -> int:
    """Ray's rule: scale the replica count by (load per replica / target), smoothed, within bounds."""
    if current == 0:
        # From zero: one replica per target's worth of load, at least one as soon as there is load.
        wanted = math.ceil(total_ongoing / config.target_ongoing_requests) if total_ongoing > 0 else 0
    else:
        error_ratio = total_ongoing / (config.target_ongoing_requests * current)
        smoothing = config.upscale_smoothing() if error_ratio >= 1 else config.downscale_smoothing()
        scaled = 1 + (error_ratio - 1) * smoothing
        wanted = current * scaled
        # Round toward the current count, so that a load just off the target does not flap.
        wanted = math.ceil(wanted - 1e-9) if error_ratio >= 1 else max(math.ceil(wanted - 1e-9), 0)
        if error_ratio < 1 and wanted == current and total_ongoing == 0:
            wanted = 0
    return max(config.min_replicas, min(config.max_replicas, int(wanted)))


class AutoscalingState:
    """One deployment's autoscaling decisions over time."""

    def __init__(self, config: AutoscalingConfig):
        self.config = config
        self.samples: collections.deque = collections.deque()  # (time, total ongoing)
        self.wish_since: float | None = None
        self.wish_direction = 0
        self.target = config.initial()

    def record(self, now: float, total_ongoing: float) -> None:
        self.samples.append((now, total_ongoing))
        horizon = now - self.config.look_back_period_s
        while len(self.samples) > 1 and self.samples[0][0] < horizon:
            self.samples.popleft()

    def average(self) -> float:
        if not self.samples:
            return 0.0
        return sum(value for _, value in self.samples) / len(self.samples)

    def decide(self, now: float, current: int) -> int:
        """The replica count to aim at now (the current target until a wish has lasted its delay)."""
        wanted = desired_replicas(self.config, self.average(), current)
        direction = (wanted > self.target) - (wanted < self.target)
        if direction == 0:
            self.wish_since, self.wish_direction = None, 0
            return self.target
        if direction != self.wish_direction:
            self.wish_since, self.wish_direction = now, direction
        if direction > 0:
            delay = self.config.upscale_delay_s
        elif wanted == 0 and self.config.downscale_to_zero_delay_s is not None:
            delay = self.config.downscale_to_zero_delay_s
        else:
            delay = self.config.downscale_delay_s
        if now - self.wish_since >= delay:
            self.target, self.wish_since, self.wish_direction = wanted, None, 0
        return self.target
