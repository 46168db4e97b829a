"""Output in the right cell: worker log lines go to the cell that submitted the work.

Each cell's execution sets ``ember.runtime.task_context.output_tag`` to its request's msg_id; tasks
carry it (and pass it on to the tasks they submit), and their log lines come back with it. The
router keeps each tag's parent header and sends the line on the kernel's IOPub channel with that
parent, so the frontend shows it under the submitting cell even while a later cell runs. ipykernel's
own ``sys.stdout`` would put it under whichever cell is busy (or, for a thread, the cell that
started the thread), which is the bug this exists to avoid.

The router is a plain class around a ``send(parent, stream, text)`` callable, so its decisions are
tested without a kernel.
"""

import threading
from collections import Counter, OrderedDict

MAX_CELLS = 2000  # parents remembered; older cells' late lines go to the newest cell instead


class OutputRouter:
    """Decides where each worker log line goes and how it is labelled.

    - a line tagged with a known cell goes to that cell, prefixed ``(name pid=N)`` as Ray does;
    - a ``%%remote`` cell's own tag (see ``remote_tag``) shows its lines unprefixed, like a local cell;
    - an ``--all-nodes`` cell's tags buffer their lines per node until ``flush_group`` prints the
      node's block under a ``[node ...]`` header (as ``%px`` groups output per engine);
    - an untagged line (a thread the user started, a detached actor) goes to the newest cell.
    """

    def __init__(self, send):
        self.send = send
        self.parents: OrderedDict = OrderedDict()
        self.plain: set = set()
        self.groups: dict = {}  # tag -> [label, lines]
        self.delivered: Counter = Counter()  # lines routed per tag (%%remote waits on it)
        self.latest = None
        self._lock = threading.Condition()

    def begin_cell(self, tag, parent) -> None:
        """Remember a cell's parent header under its tag (called before the cell runs)."""
        with self._lock:
            self.parents[tag] = parent
            self.parents.move_to_end(tag)
            while len(self.parents) > MAX_CELLS:
                old, _ = self.parents.popitem(last=False)
                self.delivered.pop(old, None)
                self.plain.discard(old)
            self.latest = tag

    def remote_tag(self, cell_tag, group_label: str | None = None) -> str:
        """A tag for a ``%%remote`` task of the cell ``cell_tag`` (one per node with ``--all-nodes``)."""
        suffix = f"#{group_label}" if group_label is not None else "#remote"
        tag = f"{cell_tag}{suffix}"
        with self._lock:
            self.parents[tag] = self.parents.get(cell_tag)
            if group_label is None:
                self.plain.add(tag)
            else:
                self.groups[tag] = [group_label, []]
        return tag

    def handle(self, stream: str, name: str, pid: int, text: str, tag) -> None:
        """The core client's ``log_handler``: called on its I/O thread for each line."""
        with self._lock:
            parent = self.parents.get(tag)
            if parent is None:
                parent = self.parents.get(self.latest)
            group = self.groups.get(tag)
            if group is not None:
                group[1].append((stream, text))
                self.delivered[tag] += 1
                self._lock.notify_all()
                return
            line = text if tag in self.plain else f"({name} pid={pid}) {text}"
        self.send(parent, stream, line + "\n")
        with self._lock:
            self.delivered[tag] += 1
            self._lock.notify_all()

    def wait_delivered(self, tag, count: int, timeout: float) -> bool:
        """Wait until ``count`` lines tagged ``tag`` were routed (a blocking cell shows all its output)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.delivered[tag] >= count, timeout)

    def flush_group(self, tag) -> None:
        """Send an ``--all-nodes`` node's buffered lines as one block under its header."""
        with self._lock:
            label, lines = self.groups.pop(tag, (None, []))
            parent = self.parents.get(tag)
        if label is None:
            return
        for stream in ("stdout", "stderr"):
            text = "".join(line + "\n" for kind, line in lines if kind == stream)
            if text or stream == "stdout":
                self.send(parent, stream, f"[{stream}:{label}]\n{text}")

    def forget(self, tag) -> None:
        with self._lock:
            self.groups.pop(tag, None)
            self.plain.discard(tag)
            if tag not in (self.latest,):
                self.parents.pop(tag, None)
            self.delivered.pop(tag, None)
