"""The kernel side of ``%load_ext ember``: the cluster's lifetime, the per-cell output tag, the router.

One ``EmberExtension`` per IPython shell. It connects the kernel as Ember's driver (starting a local
cluster unless ``EMBER_ADDRESS`` or ``%ember connect`` names one), tags every cell so worker output
finds its way back to that cell, and stops what it started on ``%unload_ext ember``; a kernel that
shuts down or restarts exits its process, and Ember's own exit hook (and, if the kernel is killed,
the cluster's watch on its driver's pipe) stops the cluster.
"""

import sys

from ember import api
from ember.kernel_ext.routing import OutputRouter
from ember.runtime.client import core_client
from ember.runtime.task_context import output_tag


class EmberExtension:
    """What ``%load_ext ember`` sets up in one shell (see the module docstring)."""

    def __init__(self, shell):
        self.shell = shell
        self.router = OutputRouter(self._send)
        self.owns_connection = False  # True when the extension called ember.init (so it shuts it down)
        self.address = None
        self._kernel_shutdown = None  # ipykernel's own do_shutdown, wrapped while the extension is loaded

    # --- the cluster ----------------------------------------------------------------------------------
    def connect(self, address: str | None = None, **init_options) -> None:
        """Connect as the driver: to ``address``, else to EMBER_ADDRESS, else a new local cluster."""
        if api.is_initialized():
            if address is None:
                self._install_router()
                return  # the user called ember.init themselves: use it, and leave it to them
            self.disconnect()
        context = api.init(address=address, **init_options)
        self.owns_connection = True
        self.address = context.address
        self._install_router()

    def _install_router(self) -> None:
        client = core_client.current_client()
        client.log_handler = self.router.handle  # on the instance: only this kernel's driver
        if self.address is None:
            self.address = api._context.address if api._context is not None else None

    def disconnect(self) -> None:
        """Shut Ember down in this kernel (stopping the cluster if this kernel started it)."""
        from ember.widgets import events

        events.stop_feed()
        if api.is_initialized():
            api.shutdown()
        self.owns_connection = False
        self.address = None

    # --- cells ----------------------------------------------------------------------------------------
    def register(self) -> None:
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)
        kernel = getattr(self.shell, "kernel", None)
        if kernel is not None and self._kernel_shutdown is None:
            # ipykernel answers a shutdown (or restart) by signalling its child processes and waiting
            # until none is left; the cluster we started is such a child, and psutil still lists it
            # as a zombie until we reap it, so the kernel would wait ~30 s. Stopping it first (which
            # reaps it) makes shutdown and restart immediate and clean.
            self._kernel_shutdown = kernel.do_shutdown

            def do_shutdown(restart):
                self.disconnect()
                return self._kernel_shutdown(restart)

            kernel.do_shutdown = do_shutdown

    def unregister(self) -> None:
        for event, callback in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            try:
                self.shell.events.unregister(event, callback)
            except ValueError:
                pass
        kernel = getattr(self.shell, "kernel", None)
        if kernel is not None and self._kernel_shutdown is not None:
            kernel.do_shutdown = self._kernel_shutdown
            self._kernel_shutdown = None

    def post_run_cell(self, result=None) -> None:
        """Renew the saved-notebook snapshots of the widgets this cell displayed (their numbers at
        its end, not when they were first drawn), and take BokehJS out of the outputs."""
        views = sys.modules.get("ember.widgets.views")  # widgets are only imported when used
        if views is not None:
            views.refresh_snapshots(cell_ended=True)
        bokeh_js = sys.modules.get("ember.widgets.bokeh_js")
        if bokeh_js is not None:
            bokeh_js.drop_from_outputs()  # 8 MB of BokehJS the page has run: not for the saved notebook

    def pre_run_cell(self, info=None) -> None:
        """Tag the cell about to run: the tag is its execute request's msg_id."""
        parent = self.current_parent()
        tag = (parent.get("header") or {}).get("msg_id") if parent else None
        if tag is None:
            tag = f"cell-{self.shell.execution_count}"
        self.router.begin_cell(tag, parent)
        # Set in the cell's own context: ipykernel runs each cell in a task whose context copy
        # includes what this hook sets, so every task the cell submits carries the tag.
        output_tag.set(tag)

    def current_parent(self) -> dict | None:
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None:
            return None
        try:
            return kernel.get_parent("shell")
        except (AttributeError, TypeError):
            return getattr(self.shell, "parent_header", None)

    def _send(self, parent, stream: str, text: str) -> None:
        """Send one stream message on IOPub with the submitting cell's parent header."""
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None or parent is None:
            (sys.__stderr__ if stream == "stderr" else sys.__stdout__).write(text)
            return
        # iopub_socket is ipykernel's thread-safe background socket: sending from Ember's I/O thread is safe.
        kernel.session.send(
            kernel.iopub_socket,
            "stream",
            {"name": stream, "text": text},
            parent=parent,
            ident=f"stream.{stream}".encode(),
        )


_extensions: dict = {}


def load(shell) -> EmberExtension:
    """``%load_ext ember``: connect, register the magics and the cell hook, show the cluster widget."""
    from ember.kernel_ext.magics import EmberMagics

    extension = _extensions.get(id(shell))
    if extension is None:
        extension = _extensions[id(shell)] = EmberExtension(shell)
        shell.register_magics(EmberMagics(shell, extension))
        extension.register()
    extension.connect()
    extension.pre_run_cell()  # the cell running %load_ext is tagged too
    try:
        from IPython.display import display

        from ember.widgets import Cluster

        display(Cluster(compact=True))
    except ImportError:
        print(f"Ember connected to {extension.address}")
    return extension


def unload(shell) -> None:
    """``%unload_ext ember``: stop the widgets' feed, shut Ember down, remove the cell hook."""
    extension = _extensions.pop(id(shell), None)
    if extension is None:
        return
    extension.unregister()
    extension.disconnect()
    output_tag.set(None)
