"""BokehJS in the notebook page: jupyter_bokeh draws a ``BokehModel`` with the page's BokehJS and
does not load it, so a bokeh widget shown before anything loaded it is a JavaScript error box.

``ensure_loaded()`` publishes BokehJS once per kernel, inline: the cluster's machines, and so the
notebook's, may have no internet to reach a CDN. Inline BokehJS is about 8 MB of output (bokeh sends
it twice, for classic and for JupyterLab), which a saved notebook must not carry: the page needs it
only once, when it arrives. So it goes out as an output with a display id, and ``drop_from_outputs``
(the extension calls it when the cell ends) empties that output; the script has run by then, and a
saved notebook shows the graph's static snapshot instead. Outside a kernel it does nothing.

A reloaded page has lost BokehJS while the kernel's widgets live on: JupyterLab draws them again from
the state the kernel sends it (ipywidgets' ``request_states``), and each bokeh plot would be an error
box. So every view with a plot also holds ``reloader()``, one hidden Output widget per kernel that is
empty, except in the state sent to a page asking for all of it: then its one output is the same loader
(run only where the page has no BokehJS yet), in time for jupyter_bokeh, which waits a second for it.
Widget outputs are trusted, so JupyterLab runs the script. Kept out of the widget's state otherwise,
the 4 MB stay out of notebooks saved with their widget state (nbclient's default), and the page is
sent the empty state again once it has run.
"""

import functools
import sys
import threading

_lock = threading.Lock()
_loaded = False
_outputs: list = []  # display handles of the BokehJS outputs still in the notebook
_reloader = None  # the hidden Output widget that loads BokehJS into a reloaded page
_JAVASCRIPT = "application/javascript"
RELOAD_SECONDS = 10.0  # after which a reloaded page has run the loader and is sent the empty state


def ensure_loaded() -> None:
    """Load BokehJS into the notebook page, once per kernel process."""
    global _loaded
    with _lock:
        if _loaded:
            return
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is None or getattr(shell, "kernel", None) is None:
            return
        from IPython.display import display

        published = _loader_outputs()
        for data in published:
            handle = display(data, raw=True, display_id=True)
            if handle is not None:
                _outputs.append(handle)
        _loaded = True


def reloader():
    """The hidden widget that brings BokehJS back into a reloaded page (None outside a kernel); a
    view shows it beside its plots."""
    global _reloader
    ensure_loaded()
    with _lock:
        if _reloader is None and _loaded:
            _reloader = _reloader_class()(layout={"display": "none"})
        return _reloader


def _reloader_class():
    import ipywidgets

    class Reloader(ipywidgets.Output):
        """An Output widget whose state carries the BokehJS loader only when a page asks for every
        widget's state (a reload); see the module's docstring."""

        def get_state(self, key=None, drop_defaults=False):
            state = super().get_state(key, drop_defaults)
            # ipywidgets answers a page's request_states from this method of its control comm; a name
            # it could change, and then a reloaded page shows the plots' error boxes, as before.
            if sys._getframe(1).f_code.co_name == "_handle_control_comm_msg" and "outputs" in state:
                state["outputs"] = ({"output_type": "display_data", "data": {_JAVASCRIPT: _guarded()}, "metadata": {}},)
                timer = threading.Timer(RELOAD_SECONDS, self.send_state, ("outputs",))  # empty again
                timer.daemon = True
                timer.start()
            return state

    return Reloader


@functools.cache
def _guarded() -> str:
    # Only where the page lacks BokehJS: a page that has it keeps the Bokeh its plots use.
    scripts = [data[_JAVASCRIPT] for data in _loader_outputs() if _JAVASCRIPT in data]
    return "".join(f"if (typeof window.Bokeh === 'undefined') {{\n{js}\n}}\n" for js in scripts)


def _loader_outputs() -> list:
    """bokeh's own notebook loader with BokehJS inline, as the display data it would publish."""
    import bokeh.io.notebook as notebook
    from bokeh.resources import INLINE

    published: list = []
    original, notebook.publish_display_data = notebook.publish_display_data, published.append
    try:
        notebook.load_notebook(resources=INLINE, hide_banner=True)
    finally:
        notebook.publish_display_data = original
    return published


def drop_from_outputs() -> None:
    """Empty the outputs that carried BokehJS (the page has run it): saved notebooks stay small."""
    with _lock:
        handles, _outputs[:] = list(_outputs), []
    for handle in handles:
        try:
            handle.update({}, raw=True)
        except Exception:
            pass  # the kernel's output channel is gone
