"""The dynamic task graph: which tasks a view draws, and where. Plain classes of a ``ClusterState``.

``TaskGraphModel`` is one view's decision: up to its ``threshold`` tasks are drawn one by one, with
an edge for each ObjectRef argument produced by another drawn task; past it, tasks are collapsed
into one node per function (with per-state counts), and the edges between functions carry how many
dependencies they stand for, a function's edges to itself included (a chain of 50 ``add`` calls is
one ``add`` node with a self-edge of 49). The decision is the view's own: ``reset`` forgets the
tasks that have ended, in this view only, so a long session can again show new tasks one by one.
Collapsed views read the state's running per-function aggregates, never the tasks, so a redraw
costs O(functions) however many tasks ran. Nodes are placed by ``graph_layout.layered_layout``.
``to_svg`` draws a graph as static SVG (saved notebooks, the web dashboard); the live widget draws
it with bokeh (``graph_plot``).
"""

import html
import itertools
from collections import Counter
from dataclasses import dataclass, field

from ember.runtime.cluster_state import FAILED, FINISHED, PENDING, RUNNING, STATES
from ember.widgets.graph_layout import layered_layout

COLOURS = {PENDING: "#94a3b8", RUNNING: "#3b82f6", FINISHED: "#22c55e", FAILED: "#ef4444"}
THRESHOLD = 150
HOVER_FIELDS = ("name", "state", "node", "pid", "duration", "error")


@dataclass
class GraphNode:
    key: object
    label: str
    state: str  # the colour: a task's state, or a group's most telling state
    info: dict = field(default_factory=dict)  # HOVER_FIELDS -> text
    counts: dict = field(default_factory=dict)  # per state, for a collapsed group
    layer: int = 0
    x: float = 0.0  # the layer
    y: float = 0.0  # the slot inside the layer, centred on 0

    @property
    def hover(self) -> str:
        lines = [f"{self.info.get('name', self.label)} [{self.info.get('state', self.state)}]"]
        lines += [f"{name} {self.info[name]}" for name in ("node", "pid", "duration") if self.info.get(name)]
        if self.info.get("error"):
            lines.append(str(self.info["error"]))
        return "\n".join(lines)


@dataclass
class Graph:
    nodes: list
    edges: list  # (source key, target key, how many dependencies); source == target for a self-edge
    collapsed: bool
    total: int  # tasks in the view
    counts: dict = field(default_factory=dict)  # tasks in the view per state


class _Baseline:
    """The tasks that had ended when a view was reset, as aggregates to subtract from the state's.

    Ended tasks stay ended, so the subtraction is exact and costs O(functions) a redraw. Tasks still
    pending or running at the reset stay in the view (they are live work, not history); their ids
    are kept to find them again, since they are not among the newest records."""

    def __init__(self, state):
        self.cleared_at = state.cleared_at
        self.seen = sum(state.counts.values())  # tasks counted before the reset
        self.records_made = state.records_made  # records made before it
        self.inflight = []
        live_edges = Counter()
        for task_id, record in state.tasks.items():
            if record.state in (PENDING, RUNNING):
                self.inflight.append(task_id)
                for dep in record.deps:  # its edges are the view's: not subtracted below
                    source = state.tasks.get(dep)
                    if source is not None:
                        live_edges[(source.name, record.name)] += 1
        self.total = self.seen - len(self.inflight)
        self.by_name = {name: {s: counts[s] for s in (FINISHED, FAILED)} for name, counts in state.by_name.items()}
        self.name_edges = Counter(state.name_edges)
        self.name_edges.subtract(live_edges)
        self.durations = {name: list(total) for name, total in state.durations.items()}


class TaskGraphModel:
    """One view's graph of a ``ClusterState``: tasks one by one up to ``threshold`` tasks in the view,
    one node per function past it."""

    def __init__(self, threshold: int = THRESHOLD):
        self.threshold = threshold
        self.baseline: _Baseline | None = None

    @property
    def threshold(self) -> int:
        return self._threshold

    @threshold.setter
    def threshold(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"threshold must be a non-negative int, got {value!r}")
        self._threshold = value

    def reset(self, state) -> None:
        """Forget the tasks that have ended, in this view only: it shows those still pending or running
        and those that come next."""
        self.baseline = _Baseline(state)

    def _current_baseline(self, state) -> _Baseline | None:
        if self.baseline is not None and self.baseline.cleared_at != state.cleared_at:
            self.baseline = None  # the state itself was cleared since: it holds only new tasks now
        return self.baseline

    def in_view(self, state) -> int:
        """How many tasks this view has seen (since its reset), forgotten ones included."""
        baseline = self._current_baseline(state)
        return sum(state.counts.values()) - (baseline.total if baseline else 0)

    def build(self, state) -> Graph:
        total = self.in_view(state)
        graph = self._collapsed(state, total) if total > self.threshold else self._tasks(state, total)
        placements = layered_layout([node.key for node in graph.nodes], [(a, b) for a, b, _ in graph.edges])
        for node in graph.nodes:
            where = placements[node.key]
            node.layer, node.x, node.y = where.layer, float(where.layer), where.slot
        return graph

    def _tasks(self, state, total: int) -> Graph:
        # Every task record is appended when first seen, so the view's new tasks are the newest ones.
        baseline = self._current_baseline(state)
        fresh = total if baseline is None else state.records_made - baseline.records_made
        records = list(itertools.islice(reversed(state.tasks.values()), fresh))
        records.reverse()
        if baseline is not None:
            older = (state.tasks.get(task_id) for task_id in baseline.inflight)
            records = [record for record in older if record is not None] + records
        nodes = {record.task_id: _task_node(record) for record in records}
        edges = [(dep, record.task_id, 1) for record in records for dep in record.deps if dep in nodes]
        counts = Counter(record.state for record in records)
        return Graph(list(nodes.values()), edges, False, total, {s: counts[s] for s in STATES})

    def _collapsed(self, state, total: int) -> Graph:
        baseline = self._current_baseline(state)
        by_name = {name: dict(counts) for name, counts in state.by_name.items()}
        name_edges = Counter(state.name_edges)
        durations = {name: list(value) for name, value in state.durations.items()}
        if baseline is not None:
            for name, counts in baseline.by_name.items():
                named = by_name.get(name)
                if named is not None:
                    for s, n in counts.items():
                        named[s] = max(0, named[s] - n)  # a retried task leaves "failed": never below 0
            name_edges.subtract(baseline.name_edges)
            for name, (seconds, count) in baseline.durations.items():
                if name in durations:
                    durations[name][0] -= seconds
                    durations[name][1] -= count
        groups = {}
        for name, counts in by_name.items():
            live = {s: counts[s] for s in STATES if counts[s] > 0}
            if live:
                groups[name] = _group_node(name, live, durations.get(name))
        edges = [(a, b, n) for (a, b), n in name_edges.items() if n > 0 and a in groups and b in groups]
        summary = {s: sum(node.counts.get(s, 0) for node in groups.values()) for s in STATES}
        return Graph(list(groups.values()), edges, True, total, summary)


def _task_node(record) -> GraphNode:
    info = {
        "name": record.name,
        "state": record.state,
        "node": (record.node or "")[:12],
        "pid": "" if record.pid is None else str(record.pid),
        "duration": "" if record.duration is None else _seconds(record.duration),
        "error": record.error or "",
    }
    return GraphNode(record.task_id, record.name, record.state, info)


def _group_node(name: str, counts: dict, durations) -> GraphNode:
    parts = ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts)
    mean = ""
    if durations and durations[1] > 0:
        mean = f"mean {_seconds(durations[0] / durations[1])} over {durations[1]}"
    info = {"name": name, "state": parts, "node": "", "pid": "", "duration": mean, "error": ""}
    if counts.get(FAILED):
        info["error"] = f"{counts[FAILED]} failed"
    return GraphNode(name, f"{name} ×{sum(counts.values())}", _group_state(counts), info, counts=counts)


def _group_state(counts: dict) -> str:
    for state in (FAILED, RUNNING, PENDING):
        if counts.get(state):
            return state
    return FINISHED


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


# --- static SVG -----------------------------------------------------------------------------------------
def to_svg(graph: Graph, width: int = 640) -> str:
    """Static SVG of ``graph`` (layers left to right): circles for tasks, labelled boxes for functions,
    arrowheads on edges, a loop with its count for a function's edges to itself; ``<title>`` elements
    carry the hover text."""
    if not graph.nodes:
        return "<div class='ember-graph-empty'>No tasks yet.</div>"
    step_x, step_y, box_w = (190, 48, 150) if graph.collapsed else (70, 34, 20)
    low = min(node.y for node in graph.nodes)
    layers = max(node.x for node in graph.nodes) + 1
    rows = max(node.y for node in graph.nodes) - low + 1
    top = 30 if graph.collapsed else 10  # room for self-loops above the first row
    view_w, view_h = int(layers * step_x + 20), int(rows * step_y + top + 10)
    where = {n.key: (10 + n.x * step_x, top + (n.y - low) * step_y) for n in graph.nodes}
    parts = [
        f"<svg class='ember-task-graph' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {view_w} {view_h}' "
        f"width='{min(width, view_w)}' style='max-height:480px' font-family='sans-serif'>"
        "<defs><marker id='ember-arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#94a3b8'/></marker></defs>"
    ]
    for source, target, count in graph.edges:
        (x1, y1), (x2, y2) = where[source], where[target]
        title = f"<title>{count} dependenc{'y' if count == 1 else 'ies'}</title>"
        if source == target:
            x, y = x1 + box_w / 2, y1
            parts.append(
                f"<path class='ember-self-edge' d='M{x + 20},{y} C{x + 35},{y - 28} {x - 35},{y - 28} {x - 20},{y}' "
                f"fill='none' stroke='#94a3b8' stroke-width='1.5' marker-end='url(#ember-arrow)'>{title}</path>"
                f"<text x='{x}' y='{y - 16}' font-size='10' text-anchor='middle' fill='#64748b'>{count}</text>"
            )
            continue
        half = 15 if graph.collapsed else 10
        stroke = min(6, 1 + count // 10)
        parts.append(
            f"<line x1='{x1 + box_w}' y1='{y1 + half}' x2='{x2}' y2='{y2 + half}' stroke='#94a3b8' "
            f"stroke-width='{stroke}' marker-end='url(#ember-arrow)'>{title}</line>"
        )
        if graph.collapsed:
            parts.append(
                f"<text x='{(x1 + box_w + x2) / 2}' y='{(y1 + y2) / 2 + half - 4}' font-size='10' "
                f"text-anchor='middle' fill='#64748b'>{count}</text>"
            )
    for node in graph.nodes:
        x, y = where[node.key]
        title = f"<title>{html.escape(node.hover)}</title>"
        if graph.collapsed:
            parts.append(_group_box(node, x, y, title))
        else:
            label = html.escape(_short(node.label, 10))
            parts.append(
                f"<circle class='ember-task ember-{node.state}' cx='{x + 10}' cy='{y + 10}' r='9' "
                f"fill='{COLOURS[node.state]}'>{title}</circle>"
                f"<text x='{x + 10}' y='{y + 29}' font-size='8' text-anchor='middle' fill='#64748b'>{label}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _group_box(node: GraphNode, x: float, y: float, title: str) -> str:
    total = sum(node.counts.values()) or 1
    bars, offset = [], 0.0
    for state in STATES:
        share = 150 * node.counts.get(state, 0) / total
        if share:
            bars.append(
                f"<rect x='{x + offset:.1f}' y='{y + 22}' width='{share:.1f}' height='6' fill='{COLOURS[state]}'/>"
            )
            offset += share
    return (
        f"<g class='ember-group ember-{node.state}'>{title}"
        f"<rect x='{x}' y='{y}' width='150' height='30' rx='4' fill='#f8fafc' stroke='{COLOURS[node.state]}'/>"
        f"<text x='{x + 4}' y='{y + 15}' font-size='11' fill='#111827'>{html.escape(_short(node.label, 24))}</text>"
        f"{''.join(bars)}</g>"
    )
