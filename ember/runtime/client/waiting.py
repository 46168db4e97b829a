"""A thread waiting in ``get`` or ``wait`` for objects (see ``Ownership.get``)."""


class Waiting:
    """A thread waiting in ``get`` or ``wait``, with the client's condition held. ``wait`` runs a
    round of the client's loop (or waits for whoever runs it); on the way out, the thread gives up
    leading (others may lead, a SIGINT held meanwhile runs) and, in a worker, takes back the CPU it
    lent while it waited (nested tasks)."""

    __slots__ = ("io", "led", "blocked")

    def __init__(self, io):
        self.io = io
        self.led = self.blocked = False

    def __enter__(self):
        return self

    def wait(self, remaining: float | None) -> None:
        if not self.blocked:
            self.blocked = self.io.notify_blocked(True)
        self.io.lead_once(remaining)
        self.led = True

    def __exit__(self, *exc_info) -> None:
        if self.led:
            self.io.stop_leading()
        if self.blocked:
            self.io.notify_blocked(False)
