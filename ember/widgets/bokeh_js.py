"""BokehJS in the notebook page: jupyter_bokeh draws a ``BokehModel`` with the page's BokehJS and
does not load it, so a bokeh widget shown before anything loaded it is a JavaScript error box.

``ensure_loaded()`` publishes BokehJS once per kernel, inline: the cluster's machines, and so the
notebook's, may have no internet to reach a CDN. Inline BokehJS is about 8 MB of output (bokeh sends
it twice, for classic and for JupyterLab), which a saved notebook must not carry: the page needs it
only once, when it arrives. So it goes out as an output with a display id, and ``drop_from_outputs``
(the extension calls it when the cell ends) empties that output; the script has run by then, and a
saved notebook shows the graph's static snapshot instead. Outside a kernel it does nothing.
"""

import threading

_lock = threading.Lock()
_loaded = False
_outputs: list = []  # display handles of the BokehJS outputs still in the notebook


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
        import bokeh.io.notebook as notebook
        from bokeh.resources import INLINE
        from IPython.display import display

        published: list = []
        original, notebook.publish_display_data = notebook.publish_display_data, published.append
        try:
            notebook.load_notebook(resources=INLINE, hide_banner=True)
        finally:
            notebook.publish_display_data = original
        for data in published:
            handle = display(data, raw=True, display_id=True)
            if handle is not None:
                _outputs.append(handle)
        _loaded = True


def drop_from_outputs() -> None:
    """Empty the outputs that carried BokehJS (the page has run it): saved notebooks stay small."""
    with _lock:
        handles, _outputs[:] = list(_outputs), []
    for handle in handles:
        try:
            handle.update({}, raw=True)
        except Exception:
            pass  # the kernel's output channel is gone
