"""Where a worker's prints go: whole lines to the driver that runs the task, and to the worker's log."""

import threading

from ember.runtime.client.core_client import CoreClient


class LogStream:
    """Replaces sys.stdout / sys.stderr: whole lines go to the driver, prefixed with the task's name."""

    def __init__(self, name: str, client: CoreClient, original):
        self.name = name
        self.client = client
        self.original = original
        self.partial = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self.partial, "text", "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            self.client.log_line(self.name, line)
        self.partial.text = rest
        self.original.write(text)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self):
        return self.original.encoding
