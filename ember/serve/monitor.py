"""Serve's live view: applications, deployments and replicas with their state, requests/s, p50/p99
latency and queue lengths, redrawn as the controller pushes its status (a long poll: the
controller answers when the status changed, at most twice a second).

``status_html`` is a plain function of the status, tested as text; ``ServeMonitor`` is the widget
(an HTML table and, through ``LiveMetrics``, curves of requests/s and p99 per deployment).
"""

import html
import threading
import time

import ember
from ember.serve import context as serve_context

HEADS = ["application", "deployment", "status", "replicas", "requests/s", "p50 ms", "p99 ms", "queued", "ongoing"]
NUMERIC = ("replicas", "requests/s", "p50 ms", "p99 ms", "queued", "ongoing")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def status_rows(status: dict) -> list:
    """One row per deployment (plain values), in application then deployment order."""
    rows = []
    for app_name, app in sorted(status.get("applications", {}).items()):
        for name, dep in sorted(app["deployments"].items()):
            running = dep["replica_states"].get("RUNNING", 0)
            rows.append(
                {
                    "application": f"{app_name} ({app['status']})",
                    "deployment": name,
                    "status": dep["status"],
                    "replicas": f"{running}/{dep['target_replicas']}",
                    "requests/s": f"{dep['requests_per_s']:.1f}",
                    "p50 ms": _ms(dep["p50_ms"]),
                    "p99 ms": _ms(dep["p99_ms"]),
                    "queued": str(dep["queued"]),
                    "ongoing": " ".join(str(r["ongoing"]) for r in dep["replicas"].values()) or "-",
                }
            )
    return rows


def status_html(status: dict) -> str:
    """The status as an HTML table (Ember's widget styling)."""
    from ember.widgets.render import table, view

    rows = [
        "<tr class='ember-serve-row'>"
        + "".join(
            f"<td class='ember-num'>{html.escape(row[h])}</td>" if h in NUMERIC else f"<td>{html.escape(row[h])}</td>"
            for h in HEADS
        )
        + "</tr>"
        for row in status_rows(status)
    ]
    address = status.get("proxy")
    note = f"<div class='ember-note'>HTTP: <code>{html.escape(address)}</code></div>" if address else ""
    return view("serve", note + table(HEADS, rows, "no applications", NUMERIC))


def status_lines(status: dict) -> list:
    """The same, as a few compact lines (outside a notebook)."""
    return [
        f"{row['application']} {row['deployment']}: {row['status']} replicas {row['replicas']} "
        f"{row['requests/s']} req/s p50 {row['p50 ms']} ms p99 {row['p99 ms']} ms queued {row['queued']}"
        for row in status_rows(status)
    ]


class ServeMonitor:
    """Follows the controller's pushed status on a daemon thread and shows it: in a notebook as a
    widget (``.widget``), elsewhere through ``on_status`` callbacks only."""

    def __init__(self, widget: bool = True):
        self.status: dict = {}
        self.version = -1
        self.closed = threading.Event()
        self.widget = self._make_widget() if widget else None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._follow, name="serve-monitor", daemon=True)
        self.thread.start()

    def _make_widget(self):
        import ipywidgets as w

        from ember.widgets.metrics import LiveMetrics
        from ember.widgets.render import STYLE

        self.table = w.HTML(status_html({}))
        self.curves = LiveMetrics(metrics=["requests/s", "p99 ms"], x="time s")
        return w.VBox([w.HTML(STYLE), self.table, self.curves])

    def _follow(self) -> None:
        try:
            controller = ember.get_actor(serve_context.CONTROLLER_NAME, namespace=serve_context.SERVE_NAMESPACE)
        except Exception:
            return
        while not self.closed.is_set():
            try:
                self.version, status = ember.get(controller.listen_for_status.remote(self.version))
            except Exception:
                return  # Serve shut down
            if status:
                self.update(status)

    def update(self, status: dict) -> None:
        self.status = status
        if self.widget is None:
            return
        self.table.value = status_html(status)
        elapsed = round(time.monotonic() - self.started, 1)
        for app_name, app in status.get("applications", {}).items():
            for name, dep in app["deployments"].items():
                values = {"time s": elapsed, "requests/s": dep["requests_per_s"]}
                if dep["p99_ms"] is not None:
                    values["p99 ms"] = dep["p99_ms"]
                self.curves.report(f"{app_name}/{name}", **values)

    def close(self) -> None:
        self.closed.set()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def monitor() -> ServeMonitor:
    """A live view of Serve (Ember's own): display it in a notebook cell; it follows the controller's
    pushed status until Serve shuts down or ``.close()``."""
    return ServeMonitor(widget=True)
