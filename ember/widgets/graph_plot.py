"""The task graph drawn with bokeh: boxes coloured by state with labels, arrows for dependencies,
loops with counts for a function's edges to itself, pan/zoom and hover.

``columns(graph)`` turns a ``graph.Graph`` into the plain columns of the plot's data sources (tested
without bokeh); ``GraphPlot`` owns one figure and, on each redraw, replaces its sources' data in
place (nothing is sent when it did not change), so the figure is built once per view.
"""

from ember.runtime.cluster_state import STATES
from ember.widgets.graph import COLOURS, HOVER_FIELDS, Graph

# Geometry in data units: a layer is one unit of x times X_STEP; slots are one unit of y apart.
TASK = {"x_step": 1.6, "width": 1.1, "height": 0.6, "chars": 12}
GROUP = {"x_step": 3.2, "width": 2.4, "height": 0.8, "chars": 24}
EDGE_COLOUR = "#94a3b8"  # mid grey: reads on light and dark backgrounds alike
TEXT_COLOUR = "#111827"  # inside the state-coloured boxes, whatever the theme
GROUP_FILL = "#e2e8f0"  # a function's box: its states are the proportional strip along its bottom
STRIP = 0.14  # the strip's height, in slots
NOTE_COLOUR = "#64748b"  # counts beside edges, on the page's own background
# Screen pixels per data unit: at most this much (a small graph is not blown up to fill the plot) and
# at least this much (a huge one shows its start at a readable size; pan or zoom out for the rest).
MOST_PX = {"x": 62.0, "y": 30.0}
LEAST_PX = {"x": 20.0, "y": 8.0}


def columns(graph: Graph) -> dict:
    """The data of each source: ``nodes`` (boxes, labels, hover fields), ``edges`` (arrows),
    ``loops`` (self-edges as curves), ``notes`` (edge counts) and ``strips`` (a collapsed function's
    tasks per state, in proportion: 10 failed of 500 is a sliver of red, not a red box)."""
    shape = GROUP if graph.collapsed else TASK
    half_w, half_h = shape["width"] / 2, shape["height"] / 2
    nodes = {"x": [], "y": [], "colour": [], "outline": [], "label": [], **{name: [] for name in HOVER_FIELDS}}
    strips = {"left": [], "right": [], "bottom": [], "top": [], "colour": []}
    where = {}
    for node in graph.nodes:
        x, y = node.x * shape["x_step"], -node.y  # the first slot on top
        where[node.key] = (x, y)
        nodes["x"].append(x)
        nodes["y"].append(y)
        nodes["colour"].append(GROUP_FILL if graph.collapsed else COLOURS[node.state])
        nodes["outline"].append(COLOURS[node.state])
        if graph.collapsed:
            _strip(strips, node.counts, x - half_w, x + half_w, y - half_h)
        nodes["label"].append(_short(node.label, shape["chars"]))
        for name in HOVER_FIELDS:
            nodes[name].append(str(node.info.get(name, "")))
    edges = {"x0": [], "y0": [], "x1": [], "y1": [], "width": []}
    loops = {"x0": [], "y0": [], "x1": [], "y1": [], "cx0": [], "cy0": [], "cx1": [], "cy1": []}
    notes = {"x": [], "y": [], "text": []}

    def arrow(x0, y0, x1, y1, width):
        for column, value in zip(("x0", "y0", "x1", "y1", "width"), (x0, y0, x1, y1, width)):
            edges[column].append(value)

    for source, target, count in graph.edges:
        (sx, sy), (tx, ty) = where[source], where[target]
        if source == target:
            # A loop over the box's top, ending in a short arrow so it has a head like other edges.
            top = sy + half_h
            right, left = sx + half_w / 2, sx - half_w / 2
            for column, value in zip(
                loops, (right, top, left + 0.05, top + 0.2, right + 0.3, top + 0.9, left - 0.3, top + 0.9)
            ):
                loops[column].append(value)
            arrow(left + 0.05, top + 0.2, left, top, 1)
            notes["x"].append(sx)
            notes["y"].append(top + 0.75)
            notes["text"].append(str(count))
            continue
        width = min(6, 1 + count // 10)
        arrow(sx + half_w, sy, tx - half_w, ty, width)
        if graph.collapsed:
            notes["x"].append((sx + tx) / 2)
            notes["y"].append((sy + ty) / 2 + 0.15)
            notes["text"].append(str(count))
    return {"nodes": nodes, "edges": edges, "loops": loops, "notes": notes, "strips": strips}


def _strip(strips: dict, counts: dict, left: float, right: float, bottom: float) -> None:
    total, span = sum(counts.values()), right - left
    for state in STATES:
        if not counts.get(state):
            continue
        width = span * counts[state] / total
        for column, value in zip(strips, (left, left + width, bottom, bottom + STRIP, COLOURS[state])):
            strips[column].append(value)
        left += width


def view_ranges(data: dict, collapsed: bool, width: int, height: int) -> tuple:
    """``((x_start, x_end), (y_start, y_end))`` to show ``columns`` data in a ``width`` x ``height``
    pixel plot: the whole graph when it fits at a readable scale, else its first layers and top rows."""
    shape = GROUP if collapsed else TASK
    nodes, loops = data["nodes"], data["loops"]
    if not nodes["x"]:
        return (-1.0, 1.0), (-1.0, 1.0)
    margin = 0.4
    left, right = min(nodes["x"]) - shape["width"] / 2 - margin, max(nodes["x"]) + shape["width"] / 2 + margin
    bottom = min(nodes["y"]) - shape["height"] / 2 - margin
    top = max(nodes["y"]) + shape["height"] / 2 + margin
    if loops["cy0"]:  # a self-edge's loop and its count rise above its box
        top = max(top, max(loops["cy0"]) + margin)
    return _span(left, right, width, "x", from_low=True), _span(bottom, top, height, "y", from_low=False)


def _span(low: float, high: float, pixels: int, axis: str, from_low: bool) -> tuple:
    per_px = min(max((high - low) / pixels, 1 / MOST_PX[axis]), 1 / LEAST_PX[axis])
    span = per_px * pixels
    if span >= high - low:
        middle = (low + high) / 2
        return (middle - span / 2, middle + span / 2)
    return (low, low + span) if from_low else (high - span, high)


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


class GraphPlot:
    """One bokeh figure for a task graph view, redrawn by replacing its sources' data."""

    def __init__(self, height: int = 420, width: int = 800):
        from bokeh.models import Arrow, ColumnDataSource, HoverTool, Range1d, VeeHead
        from bokeh.plotting import figure

        empty = columns(Graph([], [], False, 0))
        self.sources = {name: ColumnDataSource(data) for name, data in empty.items()}
        self.collapsed = False
        self.size = (width, height)
        self.shown_ranges = None  # the ranges last set here; others mean the user panned or zoomed
        plot = figure(
            height=height,
            width=width,
            x_range=Range1d(-1, 1),
            y_range=Range1d(-1, 1),
            tools="pan,wheel_zoom,box_zoom,reset,save",
            toolbar_location="right",
            sizing_mode="stretch_width",
        )
        plot.axis.visible = False
        plot.grid.visible = False
        plot.outline_line_color = None
        # Transparent, so the notebook's theme (light or dark) shows through.
        plot.background_fill_alpha = 0
        plot.border_fill_alpha = 0
        plot.bezier(
            "x0", "y0", "x1", "y1", "cx0", "cy0", "cx1", "cy1",
            source=self.sources["loops"], line_color=EDGE_COLOUR, line_width=1.5,
        )  # fmt: skip
        head = VeeHead(size=8, fill_color=EDGE_COLOUR, line_color=EDGE_COLOUR)
        plot.add_layout(
            Arrow(
                end=head,
                x_start="x0", y_start="y0", x_end="x1", y_end="y1",
                line_width="width", line_color=EDGE_COLOUR, line_alpha=0.8,
                source=self.sources["edges"], level="underlay",
            )
        )  # fmt: skip
        self.boxes = plot.rect(
            "x", "y", width=TASK["width"], height=TASK["height"], source=self.sources["nodes"],
            fill_color="colour", line_color="outline", fill_alpha=0.9, line_width=1.5,
        )  # fmt: skip
        plot.quad(
            left="left", right="right", bottom="bottom", top="top", source=self.sources["strips"],
            fill_color="colour", line_color=None,
        )  # fmt: skip
        self.labels = plot.text(
            "x", "y", text="label", source=self.sources["nodes"], text_align="center",
            text_baseline="middle", text_font_size="9px", text_color=TEXT_COLOUR,
        )  # fmt: skip
        plot.text(
            "x", "y", text="text", source=self.sources["notes"], text_align="center",
            text_baseline="bottom", text_font_size="10px", text_color=NOTE_COLOUR,
        )  # fmt: skip
        plot.add_tools(HoverTool(renderers=[self.boxes], tooltips=[(name, f"@{name}") for name in HOVER_FIELDS]))
        self.figure = plot

    def update(self, graph: Graph) -> None:
        """Show ``graph``: each source's data replaced in place when it changed."""
        if graph.collapsed != self.collapsed:
            self.collapsed = graph.collapsed
            shape = GROUP if graph.collapsed else TASK
            self.boxes.glyph.width, self.boxes.glyph.height = shape["width"], shape["height"]
            self.labels.glyph.text_font_size = "11px" if graph.collapsed else "9px"
        data = columns(graph)
        for name, values in data.items():
            source = self.sources[name]
            if source.data != values:
                source.data = values
        self._fit(view_ranges(data, graph.collapsed, *self.size))

    def _fit(self, ranges: tuple) -> None:
        x_range, y_range = self.figure.x_range, self.figure.y_range
        now = ((x_range.start, x_range.end), (y_range.start, y_range.end))
        if self.shown_ranges is not None and now != self.shown_ranges:
            return  # the user moved the view: leave it where they put it
        if now != ranges:
            x_range.start, x_range.end = ranges[0]
            y_range.start, y_range.end = ranges[1]
        self.shown_ranges = ranges
