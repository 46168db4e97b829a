"""The live widgets (ipywidgets 8): thin views over the shared event feed's ``ClusterState``.

Each widget registers a listener on the shared feed (``events.feed()``) and sets its model from
plain render functions; the feed calls listeners at most ten times a second. Setting a trait to its
current value sends nothing, so an unchanged view costs no traffic. A view in a dashboard tab that
is not shown is redrawn at most once a second (the kernel cannot hear that a tab was opened while a
cell runs, so a hidden view must not freeze), the shown one at the feed's rate.

Saved notebooks: every widget's output also carries a ``text/html`` snapshot of what it shows (with
its stylesheet) and a one-line ``text/plain``, so nbviewer, GitHub and nbconvert show the numbers
where a live widget cannot run. JupyterLab shows the live widget. The snapshot of a widget is
renewed when the cell that displayed it ends (a progress bar's final count, say) and for every widget
when the cluster disconnects (``refresh_snapshots``); not at every cell's end, since renewing an
output makes JupyterLab draw its live widget anew.
"""

import time
import weakref

import ipywidgets as w

from ember.runtime.cluster_state import STATES
from ember.widgets import bokeh_js, events
from ember.widgets.graph import COLOURS, THRESHOLD, TaskGraphModel, to_svg
from ember.widgets.graph_plot import GraphPlot
from ember.widgets.render import (
    STYLE,
    actors_html,
    cluster_html,
    disconnected_html,
    gpus_html,
    store_html,
)
from ember.widgets.scaling import ScalingControls

HIDDEN_REDRAW = 1.0  # seconds between redraws of a view in a tab that is not shown
_displayed: "weakref.WeakSet[LiveWidget]" = weakref.WeakSet()  # widgets whose outputs hold a snapshot
_displayed_in_cell: weakref.WeakSet = weakref.WeakSet()  # those displayed by the cell running now


class LiveWidget(w.VBox):
    """Base: subscribes ``update(state)`` to the shared feed until the widget is closed; subclasses
    give ``snapshot()`` (the HTML of what they show) and ``TITLE``."""

    TITLE = "view"

    def __init__(self, feed: events.EventFeed | None = None, children=(), **kwargs):
        self.banner = w.HTML()  # empty while connected; says so once the cluster is gone
        # The stylesheet goes once, in a child of its own: each redraw sends only the view's HTML.
        super().__init__(children=[w.HTML(STYLE), self.banner, *children], **kwargs)
        self.hidden = False  # in a tab that is not shown: redrawn once a second, not at every change
        self.stale = False
        self.last_drawn = 0.0
        self.displays: list = []  # display handles whose text/html snapshot is renewed
        self.feed = feed or events.feed()
        with self.feed.lock:
            self._draw(self.feed.state)  # draw at once with what is known
        self.feed.add_listener(self._listen)
        self.feed.add_stop_listener(self._on_disconnected)

    def _listen(self, state) -> None:
        if self.comm is None:  # closed: stop listening
            self.feed.remove_listener(self._listen)
            self.feed.want_tasks(self, False)
            return
        since = time.monotonic() - self.last_drawn
        if self.hidden and since < HIDDEN_REDRAW:
            self.stale = True
            self.feed.poke_later(HIDDEN_REDRAW - since)  # redrawn then, even if nothing else comes
            return
        self._draw(state)

    def _draw(self, state) -> None:
        self.stale = False
        self.last_drawn = time.monotonic()
        self.update(state)

    def set_shown(self, shown: bool) -> None:
        """Redraw at the feed's rate while shown, once a second while hidden (a dashboard's other
        tabs): they cost the kernel's CPU."""
        self.hidden = not shown
        if shown and self.stale:
            with self.feed.lock:
                self._draw(self.feed.state)

    def update(self, state) -> None:
        raise NotImplementedError

    def snapshot(self) -> str:
        """The HTML of what the widget shows now (its saved-notebook snapshot): by default, that of
        its HTML children."""
        return "".join(child.value for child in self.children[2:] if isinstance(child, w.HTML))

    def _on_disconnected(self, why: str) -> None:
        self.banner.value = disconnected_html(why)
        self.refresh_snapshots()

    # --- saved-notebook snapshots --------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return _with_snapshot(
            super()._repr_mimebundle_(**kwargs), self.feed, self.TITLE, lambda: self.banner.value + self.snapshot()
        )

    def _ipython_display_(self) -> None:
        _display(self)

    def refresh_snapshots(self) -> None:
        """Renew the text/html snapshot in every output that shows this widget."""
        _refresh(self)

    def close(self) -> None:
        self.feed.remove_listener(self._listen)
        self.feed.remove_listener(self._on_disconnected)
        self.feed.want_tasks(self, False)
        _displayed.discard(self)
        super().close()


def _with_snapshot(data: dict | None, feed, title: str, snapshot) -> dict:
    """A widget's mime bundle with its text/html snapshot (``snapshot()``, read under the feed's
    lock) and a one-line text/plain in place of the widget's repr."""
    data = data or {}
    with feed.lock:
        summary = feed.state.summary()
        data["text/html"] = STYLE + snapshot()
    counts = ", ".join(f"{summary[state]} {state}" for state in summary)
    data["text/plain"] = f"Ember {title} (live in JupyterLab): tasks {counts}"
    return data


def _display(widget) -> None:
    # Displayed with a display id, so the snapshot in the output can be renewed later.
    from IPython.display import display

    handle = display(widget._repr_mimebundle_(), raw=True, display_id=True)
    if handle is not None:
        widget.displays.append(handle)
        _displayed.add(widget)
        _displayed_in_cell.add(widget)


def _refresh(widget) -> None:
    if not widget.displays or widget.comm is None:
        return
    # Drawn anew from the state first: the feed redraws at most ten times a second, so what the
    # widget last drew may be a round behind the events already applied.
    for view in getattr(widget, "views", [widget]):
        with view.feed.lock:
            view._draw(view.feed.state)
    bundle = widget._repr_mimebundle_()
    for handle in widget.displays:
        try:
            handle.update(bundle, raw=True)
        except Exception:
            pass  # the kernel's output channel is gone (shutting down)


def refresh_snapshots(cell_ended: bool = False) -> None:
    """Renew the snapshots of the widgets displayed in this kernel: with ``cell_ended``, those the
    cell that just ended displayed (the extension calls this when a cell ends), else all of them."""
    widgets = list(_displayed_in_cell if cell_ended else _displayed)
    _displayed_in_cell.clear()
    for widget in widgets:
        _refresh(widget)


def view_counts(counts: dict) -> str:
    return " · ".join(f"<span class='ember-count-{s}'>{counts.get(s, 0)}</span> {s}" for s in STATES)


class Cluster(LiveWidget):
    """Nodes with CPU/GPU/memory/object store bars, workers, pending demand and task counts."""

    TITLE = "cluster"

    def __init__(self, compact: bool = False, feed=None, **kwargs):
        self.compact = compact
        self.html = w.HTML()
        self.scaling = ScalingControls()  # shown when the cluster runs an autoscaler
        import ember

        context = ember.api._context
        self.address = context.address if context is not None else None
        from ember.dashboard import link

        self.dashboard = link(context.dashboard_url if context is not None else None)
        super().__init__(feed=feed, children=[self.html, self.scaling], **kwargs)

    def update(self, state) -> None:
        self.html.value = cluster_html(state, self.address, compact=self.compact, dashboard=self.dashboard)
        if not self.compact:
            self.scaling.refresh()

    def snapshot(self) -> str:
        return self.html.value


class TaskGraph(LiveWidget):
    """The dynamic task graph: tasks coloured by state, ObjectRef dependencies as arrows, hover with
    name, state, node, pid, duration and error; pan and zoom. Past ``threshold`` tasks in this view it
    collapses into one node per function (edges between functions, and a function's to itself, keep
    their counts); "Reset" forgets the tasks shown so far, in this view only."""

    def __init__(self, threshold: int | None = None, feed=None, **kwargs):
        from jupyter_bokeh import BokehModel

        threshold = THRESHOLD if threshold is None else threshold
        self.graph_model = TaskGraphModel(threshold)
        self.counts = w.HTML()
        self.plot = GraphPlot()
        feed = feed or events.feed()
        feed.want_tasks(self, True, wait=1.0)  # task by task until it collapses (update says)
        with feed.lock:
            # Drawn before the BokehModel takes its snapshot: the page renders that snapshot, and
            # jupyter_bokeh drops changes sent before a view has rendered.
            self.plot.update(self.graph_model.build(feed.state))
        self.picture = BokehModel(self.plot.figure)
        self.picture.add_class("ember-task-graph")
        # The label sized to its text: a fixed description width cut it to "collapse p..." at 1024 px.
        self.threshold_box = w.BoundedIntText(
            value=threshold,
            min=0,
            max=1_000_000,
            description="collapse past",
            style={"description_width": "initial"},
            layout=w.Layout(width="190px"),
        )
        self.reset_button = w.Button(
            description="Reset", tooltip="forget the tasks shown so far in this view", layout=w.Layout(width="auto")
        )
        legend = " ".join(
            f"<span style='color:{c}'>\u25a0</span> <span style='color:var(--jp-ui-font-color1, inherit)'>{s}</span>"
            for s, c in COLOURS.items()
        )
        self.legend = w.HTML(f"<small>{legend}</small>")
        self.graph = None
        controls = w.HBox(
            [self.threshold_box, self.reset_button, self.legend],
            layout=w.Layout(flex_flow="row wrap", align_items="center", grid_gap="4px 12px"),
        )
        reloader = bokeh_js.reloader()  # BokehJS for a reloaded page (None outside a kernel)
        parts = [self.counts, controls, *([reloader] if reloader is not None else []), self.picture]
        super().__init__(feed=feed, children=parts, **kwargs)
        self.threshold_box.observe(self._on_threshold, names="value")
        self.reset_button.on_click(lambda _: self.reset())

    def reset(self) -> None:
        """Forget the tasks drawn so far in this view; new tasks are drawn one by one again."""
        with self.feed.lock:
            self.graph_model.reset(self.feed.state)
            self.plot.shown_ranges = None  # fit the view to what comes next, wherever it was moved
            self.update(self.feed.state)

    def _on_threshold(self, change) -> None:
        with self.feed.lock:
            self.graph_model.threshold = int(change["new"])
            self.update(self.feed.state)

    TITLE = "task graph"

    def update(self, state) -> None:
        self.graph = self.graph_model.build(state)
        # Task by task only below the threshold: past it the head's summary is all this view needs.
        self.feed.want_tasks(self, not self.graph.collapsed)
        mode = " (collapsed by function)" if self.graph.collapsed else ""
        self.counts.value = f"<div class='ember-graph-counts'>tasks{mode}: {view_counts(self.graph.counts)}</div>"
        self.plot.update(self.graph)

    def snapshot(self) -> str:
        """The graph as it is now, as static HTML (SVG): for saved notebooks, where bokeh cannot run."""
        return self.counts.value + self.legend.value + (to_svg(self.graph) if self.graph else "")

    static_html = snapshot


class ObjectStore(LiveWidget):
    """Per node used / capacity / spilled; the largest objects with what made them and their size."""

    def __init__(self, feed=None, **kwargs):
        self.html = w.HTML()
        super().__init__(feed=feed, children=[self.html], **kwargs)

    TITLE = "object store"

    def update(self, state) -> None:
        self.html.value = store_html(state)

    def snapshot(self) -> str:
        return self.html.value


class GPUs(LiveWidget):
    """Per node and GPU id: which task or actor holds it and what share."""

    def __init__(self, feed=None, **kwargs):
        self.html = w.HTML()
        super().__init__(feed=feed, children=[self.html], **kwargs)

    TITLE = "GPUs"

    def update(self, state) -> None:
        self.html.value = gpus_html(state)

    def snapshot(self) -> str:
        return self.html.value


class Actors(LiveWidget):
    """Actors with their class, name, state, process, node, restarts and calls."""

    def __init__(self, feed=None, **kwargs):
        self.html = w.HTML()
        super().__init__(feed=feed, children=[self.html], **kwargs)

    TITLE = "actors"

    def update(self, state) -> None:
        self.html.value = actors_html(state)

    def snapshot(self) -> str:
        return self.html.value


class _Group:
    """Several views in one output (a stack, a dashboard's tabs), with one snapshot of them all.
    Its subclasses set ``views`` (the LiveWidgets), ``displays`` and ``feed`` in ``__init__``."""

    TITLE = "widgets"
    views: list
    displays: list

    def snapshot(self) -> str:
        return "".join(view.banner.value + view.snapshot() for view in self.views)

    def _repr_mimebundle_(self, **kwargs):
        return _with_snapshot(super()._repr_mimebundle_(**kwargs), self.feed, self.TITLE, self.snapshot)

    def _ipython_display_(self) -> None:
        _display(self)

    def refresh_snapshots(self) -> None:
        _refresh(self)

    def close(self) -> None:
        for view in self.views:
            view.close()
        _displayed.discard(self)
        super().close()


class Stack(_Group, w.VBox):
    """``%ember widgets``: views stacked in one output."""

    def __init__(self, views: list, **kwargs):
        self.views = views
        self.displays = []
        self.feed = views[0].feed
        super().__init__(children=views, **kwargs)


def all_widgets(feed=None) -> Stack:
    """``%ember widgets``: the cluster, task graph, object store and GPU widgets stacked."""
    return Stack([Cluster(feed=feed), TaskGraph(feed=feed), ObjectStore(feed=feed), GPUs(feed=feed)])


class Dashboard(_Group, w.Tab):
    """``%ember dashboard``: every widget in one set of tabs (its saved snapshot shows them all)."""

    TITLES = ("Cluster", "Task graph", "Object store", "GPUs", "Actors")
    TITLE = "dashboard"

    def __init__(self, feed=None, **kwargs):
        self.views = [
            Cluster(feed=feed),
            TaskGraph(feed=feed),
            ObjectStore(feed=feed),
            GPUs(feed=feed),
            Actors(feed=feed),
        ]
        self.displays = []
        self.feed = self.views[0].feed
        super().__init__(children=self.views, titles=self.TITLES, **kwargs)
        self.observe(self._on_selected, names="selected_index")
        self._on_selected()

    def _on_selected(self, change=None) -> None:
        for index, view in enumerate(self.views):
            view.set_shown(index == (self.selected_index or 0))
