"""The dynamic task graph as a picture: which tasks to draw, where, and the SVG that draws them.

``TaskGraphModel.build(state)`` decides (a plain function of the ``ClusterState``, unit-tested):
up to ``threshold`` tasks are drawn one by one, with an edge for each ObjectRef argument produced by
another drawn task; past it, tasks are collapsed into one node per function (with per-state counts),
and edges between functions carry how many dependencies they stand for. A notebook with a hundred
thousand tasks therefore draws a handful of nodes. ``to_svg`` turns the result into inline SVG whose
``<title>`` elements are the hover text (name, node, duration, error).
"""

import html
from dataclasses import dataclass, field

from ember.widgets.state import FAILED, FINISHED, PENDING, RUNNING, STATES

COLOURS = {PENDING: "#b0b7c3", RUNNING: "#3b82f6", FINISHED: "#22c55e", FAILED: "#ef4444"}
THRESHOLD = 150
ROWS = 12  # nodes per column inside a layer before it wraps into another column


@dataclass
class GraphNode:
    key: object
    label: str
    state: str  # the colour: a task's state, or a group's most telling state
    hover: str
    counts: dict = field(default_factory=dict)  # per state, for a collapsed group
    layer: int = 0
    x: float = 0.0
    y: float = 0.0


@dataclass
class Graph:
    nodes: list
    edges: list  # (source key, target key, how many dependencies)
    collapsed: bool
    total: int


class TaskGraphModel:
    """Builds the graph to draw from a ``ClusterState``; collapses by function past ``threshold`` tasks."""

    def __init__(self, threshold: int = THRESHOLD):
        self.threshold = threshold

    def build(self, state) -> Graph:
        tasks = state.tasks
        if len(tasks) > self.threshold:
            return self._collapsed(state)
        nodes = {}
        for task_id, record in tasks.items():
            nodes[task_id] = GraphNode(task_id, record.name, record.state, _task_hover(record))
        edges = []
        for task_id, record in tasks.items():
            for dep in record.deps:
                if dep in nodes:
                    edges.append((dep, task_id, 1))
        graph = Graph(list(nodes.values()), edges, collapsed=False, total=len(tasks))
        _layout(graph)
        return graph

    def _collapsed(self, state) -> Graph:
        # From the state's running aggregates only: a redraw never walks the tasks.
        groups: dict = {}
        for name, counts in state.by_name.items():
            live = {s: counts[s] for s in STATES if counts[s] > 0}
            if live:
                groups[name] = GraphNode(name, name, _group_state(live), _group_hover(name, live), counts=live)
        for name, (total, count) in state.durations.items():
            if name in groups and count:
                groups[name].hover += f"\nmean duration {_seconds(total / count)}"
        edges = [(a, b, n) for (a, b), n in state.name_edges.items() if a in groups and b in groups]
        graph = Graph(list(groups.values()), edges, collapsed=True, total=sum(state.counts.values()))
        _layout(graph)
        return graph


def _group_state(counts: dict) -> str:
    for state in (FAILED, RUNNING, PENDING):
        if counts.get(state):
            return state
    return FINISHED


def _task_hover(record) -> str:
    lines = [f"{record.name} [{record.state}]"]
    if record.node:
        lines.append(f"node {record.node[:12]} pid {record.pid}")
    if record.duration is not None:
        lines.append(f"duration {_seconds(record.duration)}")
    if record.error:
        lines.append(record.error)
    return "\n".join(lines)


def _group_hover(name: str, counts: dict) -> str:
    parts = ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts)
    return f"{name}: {sum(counts.values())} tasks ({parts})"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _layout(graph: Graph) -> None:
    """Layers by dependency depth (left to right); within a layer, columns of at most ROWS nodes."""
    incoming: dict = {}
    for source, target, _ in graph.edges:
        if source != target:
            incoming.setdefault(target, []).append(source)
    depth: dict = {}

    def layer_of(key, seen=()):
        if key in depth:
            return depth[key]
        if key in seen:  # a cycle between collapsed groups (f calls g calls f): stop there
            return 0
        sources = incoming.get(key, [])
        depth[key] = 1 + max((layer_of(s, (*seen, key)) for s in sources), default=-1)
        return depth[key]

    columns = 0
    for node in graph.nodes:
        node.layer = layer_of(node.key)
    layers: dict = {}
    for node in graph.nodes:
        layers.setdefault(node.layer, []).append(node)
    for layer in sorted(layers):
        members = layers[layer]
        for index, node in enumerate(members):
            node.x = columns + index // ROWS
            node.y = index % ROWS
        columns += (len(members) - 1) // ROWS + 1


def to_svg(graph: Graph, width: int = 640) -> str:
    """Inline SVG for ``graph``: circles for tasks, labelled boxes for collapsed functions."""
    if not graph.nodes:
        return "<div class='ember-graph-empty'>No tasks yet.</div>"
    step_x, step_y = (170, 44) if graph.collapsed else (46, 30)
    columns = max(node.x for node in graph.nodes) + 1
    rows = max(node.y for node in graph.nodes) + 1
    view_w, view_h = int(columns * step_x + 20), int(rows * step_y + 20)
    where = {node.key: (10 + node.x * step_x, 10 + node.y * step_y) for node in graph.nodes}
    parts = [
        f"<svg class='ember-task-graph' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {view_w} {view_h}' "
        f"width='{min(width, view_w)}' style='max-height:420px'>"
    ]
    for source, target, count in graph.edges:
        (x1, y1), (x2, y2) = where[source], where[target]
        if graph.collapsed:
            x1, y1, x2, y2 = x1 + 150, y1 + 15, x2, y2 + 15
        else:
            x1, y1, x2, y2 = x1 + 10, y1 + 10, x2 + 10, y2 + 10
        stroke = min(6, 1 + count // 10)
        parts.append(
            f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='#94a3b8' stroke-width='{stroke}'>"
            f"<title>{count} dependencies</title></line>"
        )
    for node in graph.nodes:
        x, y = where[node.key]
        title = f"<title>{html.escape(node.hover)}</title>"
        if graph.collapsed:
            parts.append(_group_box(node, x, y, title))
        else:
            parts.append(
                f"<circle class='ember-task ember-{node.state}' cx='{x + 10}' cy='{y + 10}' r='9' "
                f"fill='{COLOURS[node.state]}'>{title}</circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


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
    label = html.escape(node.label if len(node.label) <= 22 else node.label[:21] + "…")
    return (
        f"<g class='ember-group ember-{node.state}'>{title}"
        f"<rect x='{x}' y='{y}' width='150' height='30' rx='4' fill='white' stroke='{COLOURS[node.state]}'/>"
        f"<text x='{x + 4}' y='{y + 15}' font-size='11'>{label} ×{sum(node.counts.values())}</text>"
        f"{''.join(bars)}</g>"
    )
