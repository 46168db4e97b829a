"""The live widgets (ipywidgets 8): thin views over the shared event feed's ``ClusterState``.

Each widget registers a listener on the shared feed (``events.feed()``) and sets its model from
plain render functions; the feed calls listeners at most ten times a second. Setting a trait to its
current value sends nothing, so an unchanged view costs no traffic.
"""

import ipywidgets as w

from ember.widgets import events
from ember.widgets.graph import COLOURS, TaskGraphModel, to_svg
from ember.widgets.render import actors_html, cluster_html, gpus_html, store_html, task_counts


class LiveWidget(w.VBox):
    """Base: subscribes ``update(state)`` to the shared feed until the widget is closed."""

    def __init__(self, feed: events.EventFeed | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hidden = False  # in a tab that is not shown: redrawn when it is, not before
        self.stale = False
        self.feed = feed or events.feed()
        with self.feed.lock:
            self.update(self.feed.state)  # draw at once with what is known
        self.feed.add_listener(self._listen)

    def _listen(self, state) -> None:
        if self.comm is None:  # closed: stop listening
            self.feed.remove_listener(self._listen)
            return
        if self.hidden:
            self.stale = True
            return
        self.update(state)

    def set_shown(self, shown: bool) -> None:
        """Pause redraws while hidden (a dashboard's other tabs): they cost the kernel's CPU."""
        self.hidden = not shown
        if shown and self.stale:
            self.stale = False
            with self.feed.lock:
                self.update(self.feed.state)

    def update(self, state) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.feed.remove_listener(self._listen)
        super().close()


class Cluster(LiveWidget):
    """Nodes with CPU/GPU/memory/object store bars, workers, pending demand and task counts."""

    def __init__(self, compact: bool = False, feed=None, **kwargs):
        self.compact = compact
        self.html = w.HTML()
        import ember

        self.address = ember.api._context.address if ember.api._context is not None else None
        super().__init__(feed=feed, children=[self.html], **kwargs)

    def update(self, state) -> None:
        self.html.value = cluster_html(state, self.address, compact=self.compact)


class TaskGraph(LiveWidget):
    """The dynamic task graph: tasks coloured by state, ObjectRef dependencies as edges, hover text;
    collapsed into one node per function past ``threshold`` tasks."""

    def __init__(self, threshold: int | None = None, feed=None, **kwargs):
        self.graph_model = TaskGraphModel(threshold) if threshold else TaskGraphModel()
        self.counts = w.HTML()
        self.picture = w.HTML()
        legend = " ".join(f"<span style='color:{c}'>●</span> {s}" for s, c in COLOURS.items())
        self.legend = w.HTML(f"<small>{legend}</small>")
        self.graph = None
        super().__init__(feed=feed, children=[self.counts, self.legend, self.picture], **kwargs)

    def update(self, state) -> None:
        self.graph = self.graph_model.build(state)
        mode = " (collapsed by function)" if self.graph.collapsed else ""
        self.counts.value = f"<div class='ember-graph-counts'>tasks{mode}: {task_counts(state)}</div>"
        self.picture.value = to_svg(self.graph)


class ObjectStore(LiveWidget):
    """Per node used / capacity / spilled; the largest objects with what made them and their size."""

    def __init__(self, feed=None, **kwargs):
        self.html = w.HTML()
        super().__init__(feed=feed, children=[self.html], **kwargs)

    def update(self, state) -> None:
        self.html.value = store_html(state)


class GPUs(LiveWidget):
    """Per node and GPU id: which task or actor holds it and what share."""

    def __init__(self, feed=None, **kwargs):
        self.html = w.HTML()
        super().__init__(feed=feed, children=[self.html], **kwargs)

    def update(self, state) -> None:
        self.html.value = gpus_html(state)


class Actors(LiveWidget):
    """Actors by id, class, name and state."""

    def __init__(self, feed=None, **kwargs):
        self.html = w.HTML()
        super().__init__(feed=feed, children=[self.html], **kwargs)

    def update(self, state) -> None:
        self.html.value = actors_html(state)


def all_widgets(feed=None) -> w.VBox:
    """``%ember widgets``: the cluster, task graph, object store and GPU widgets stacked."""
    return w.VBox([Cluster(feed=feed), TaskGraph(feed=feed), ObjectStore(feed=feed), GPUs(feed=feed)])


class Dashboard(w.Tab):
    """``%ember dashboard``: every widget in one set of tabs."""

    TITLES = ("Cluster", "Task graph", "Object store", "GPUs", "Actors")

    def __init__(self, feed=None, **kwargs):
        self.views = [
            Cluster(feed=feed),
            TaskGraph(feed=feed),
            ObjectStore(feed=feed),
            GPUs(feed=feed),
            Actors(feed=feed),
        ]
        super().__init__(children=self.views, titles=self.TITLES, **kwargs)
        self.observe(self._on_selected, names="selected_index")
        self._on_selected()

    def _on_selected(self, change=None) -> None:
        for index, view in enumerate(self.views):
            view.set_shown(index == (self.selected_index or 0))

    def close(self) -> None:
        for view in self.views:
            view.close()
        super().close()
