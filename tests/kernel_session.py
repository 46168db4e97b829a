"""A real IPython kernel for the notebook tests, driven over the Jupyter protocol (jupyter_client).

Every IOPub message is kept under the msg_id of the request it belongs to (its parent header), which
is exactly what a frontend uses to decide which cell shows it; so a test can say "this line was
shown under cell A, and it arrived while cell B was running".
"""

import os
import queue
import sys
import threading
import time
from collections import defaultdict

from jupyter_client.manager import KernelManager


class KernelSession:
    """Starts an ipykernel with this test run's environment; ``execute`` runs one cell."""

    def __init__(self, cwd: str | None = None, env: dict | None = None):
        self.manager = KernelManager(kernel_name="python3")
        self.manager.kernel_cmd = None
        full_env = dict(os.environ)
        full_env.pop("EMBER_ADDRESS", None)
        full_env.update(env or {})
        self.manager.kernel_spec.argv[0] = sys.executable  # this virtual environment's Python
        self.manager.start_kernel(env=full_env, cwd=cwd or os.getcwd())
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.messages = defaultdict(list)  # parent msg_id -> [(arrival index, message)]
        self.idle: set = set()
        self.arrivals = 0
        self.changed = threading.Condition()
        self._stop = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                message = self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            except Exception:
                return
            parent = message["parent_header"].get("msg_id")
            with self.changed:
                self.arrivals += 1
                self.messages[parent].append((self.arrivals, message))
                if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                    self.idle.add(parent)
                self.changed.notify_all()

    def execute(self, code: str, timeout: float = 90, allow_error: bool = False) -> "Cell":
        msg_id = self.client.execute(code)
        reply = self.client.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=timeout)
        with self.changed:
            self.changed.wait_for(lambda: msg_id in self.idle, timeout)
            reply_index = self.arrivals
        cell = Cell(self, msg_id, reply, reply_index)
        if reply["content"]["status"] != "ok" and not allow_error:
            raise AssertionError(f"cell failed:\n{code}\n{cell.error_text()}")
        return cell

    def wait_for_output(self, cell: "Cell", text: str, timeout: float = 30) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: text in cell.stdout() + cell.stderr(), timeout):
                raise AssertionError(f"{text!r} never appeared under the cell; it has {cell.outputs()}")

    def restart(self) -> None:
        """Restart the kernel. The reader thread stops meanwhile: ``wait_for_ready`` reads the iopub
        channel too, and two threads reading one socket tear its messages apart."""
        self._stop = True
        self._reader.join()
        self.manager.restart_kernel(now=False)
        self.client.wait_for_ready(timeout=60)
        self._stop = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def shutdown(self) -> None:
        try:
            self.client.shutdown()
            deadline = time.monotonic() + 30
            while self.manager.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self._stop = True
            self.client.stop_channels()
            if self.manager.is_alive():
                self.manager.shutdown_kernel(now=True)
            self.manager.cleanup_resources()


class Cell:
    """One executed cell: its reply and the IOPub messages that name it as their parent."""

    def __init__(self, session: KernelSession, msg_id: str, reply: dict, reply_index: int):
        self.session = session
        self.msg_id = msg_id
        self.reply = reply
        self.reply_index = reply_index

    def messages(self, after_reply: bool = False) -> list:
        found = self.session.messages.get(self.msg_id, [])
        return [m for index, m in found if not after_reply or index > self.reply_index]

    def outputs(self) -> list:
        kinds = ("stream", "display_data", "execute_result", "error")
        return [(m["msg_type"], m["content"]) for m in self.messages() if m["msg_type"] in kinds]

    def stream(self, name: str, after_reply: bool = False) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages(after_reply)
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    def stdout(self) -> str:
        return self.stream("stdout")

    def stderr(self) -> str:
        return self.stream("stderr")

    def result(self) -> dict:
        """The execute_result's data by MIME type ({} when the cell had no result)."""
        for kind, content in self.outputs():
            if kind == "execute_result":
                return content["data"]
        return {}

    def error(self) -> dict | None:
        for kind, content in self.outputs():
            if kind == "error":
                return content
        return None

    def error_text(self) -> str:
        error = self.error()
        if error is None:
            return str(self.reply["content"])
        import re

        return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
