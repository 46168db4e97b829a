"""BokehJS in the notebook page: jupyter_bokeh draws a ``BokehModel`` with the page's BokehJS and
does not load it, so a bokeh widget shown before anything loaded it is a JavaScript error box.

``ensure_loaded()`` publishes BokehJS once per kernel (inline: the cluster's machines, and so the
notebook's, may have no internet to reach a CDN). Outside a kernel it does nothing.
"""

import threading

_lock = threading.Lock()
_loaded = False


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
        from bokeh.io import output_notebook
        from bokeh.resources import INLINE

        output_notebook(resources=INLINE, hide_banner=True)
        _loaded = True
