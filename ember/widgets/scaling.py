"""The cluster widget's scaling controls: Ray's ``request_resources``, wired to Ember's autoscaler.

Shown only when the cluster runs an autoscaler (``ember start --head --autoscale ...``): a number
of CPUs to ask for ahead of work, "Request" (``request_resources(num_cpus=n)``), "Clear"
(``request_resources()``), and what the autoscaler last reported (its limit, the nodes it launched,
demand that fits no node it can launch). Dask's cluster widget has manual and adaptive scaling; here
the autoscaler is the adaptive part, and these controls are the manual one.
"""

import html
import logging
import time

import ipywidgets as w

logger = logging.getLogger(__name__)

STATUS_PERIOD = 5.0  # seconds between looks at the autoscaler's status


class ScalingControls(w.VBox):
    """Request and clear capacity through the autoscaler; hidden while the cluster runs none."""

    def __init__(self, **kwargs):
        self.cpus = w.BoundedIntText(value=1, min=0, max=100_000, description="CPUs", layout=w.Layout(width="160px"))
        self.request = w.Button(description="Request", tooltip="request_resources(num_cpus=...)")
        self.clear = w.Button(description="Clear", tooltip="request_resources(): drop the standing request")
        self.status = w.HTML()
        self.request.on_click(lambda _: self._ask(self.cpus.value))
        self.clear.on_click(lambda _: self._ask(None))
        self.checked = 0.0
        super().__init__(children=[w.HBox([self.cpus, self.request, self.clear]), self.status], **kwargs)
        self.layout.display = "none"

    def _ask(self, num_cpus: int | None) -> None:
        from ember.autoscaler import request_resources

        try:
            request_resources(num_cpus=num_cpus) if num_cpus else request_resources()
        except Exception as error:  # a button has nowhere to raise to: show it
            self.status.value = f"<span class='ember-disconnected'>{html.escape(str(error))}</span>"
            return
        asked = f"{num_cpus} CPU(s) requested" if num_cpus else "request cleared"
        self.status.value = f"<span class='ember-note'>{asked}; the autoscaler acts within a few seconds</span>"
        self.checked = 0.0  # show its answer at the next refresh

    def refresh(self, now: float | None = None) -> None:
        """Look at the autoscaler's status (at most every STATUS_PERIOD seconds); show or hide."""
        now = time.monotonic() if now is None else now
        if now - self.checked < STATUS_PERIOD:
            return
        self.checked = now
        from ember.autoscaler import status

        try:
            found = status()
        except Exception:
            logger.debug("no autoscaler status", exc_info=True)
            found = None
        if found is None:
            self.layout.display = "none"
            return
        self.layout.display = ""
        self.status.value = status_html(found)


def status_html(status: dict) -> str:
    """One line of what the autoscaler last reported."""
    launched = status.get("launched") or []
    running = sum(1 for _, state in launched if state == "running")
    line = (
        f"autoscaler: <span class='ember-autoscaler-nodes'>{running}</span> worker node(s) running, "
        f"{len(launched) - running} launching, at most {status.get('max_workers')}"
    )
    infeasible = status.get("infeasible") or []
    if infeasible:
        shapes = "; ".join(", ".join(f"{k}: {v:g}" for k, v in shape.items()) for shape in infeasible[:3])
        line += f"; <span class='ember-infeasible'>no node it can launch fits {html.escape(shapes)}</span>"
    return f"<span class='ember-note'>{line}</span>"
