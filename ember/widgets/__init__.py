"""Live notebook widgets fed by the head's event stream (ipywidgets 8; bokeh for metric plots).

Each works on its own (``ember.widgets.TaskGraph()`` as a cell's last expression) or together in
``%ember dashboard``. They share one subscription to the event hub (``events.feed()``) and update at
most ten times a second.
"""

from ember.widgets.metrics import LiveMetrics, MetricHistory
from ember.widgets.progress import Progress, TextProgress, progress
from ember.widgets.progress_model import ProgressModel
from ember.widgets.views import Actors, Cluster, Dashboard, GPUs, ObjectStore, TaskGraph, all_widgets

__all__ = [
    "Actors",
    "Cluster",
    "Dashboard",
    "GPUs",
    "LiveMetrics",
    "MetricHistory",
    "ObjectStore",
    "Progress",
    "ProgressModel",
    "TaskGraph",
    "TextProgress",
    "all_widgets",
    "progress",
]
