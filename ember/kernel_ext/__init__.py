"""The IPython extension: ``%load_ext ember`` in a notebook.

Importing this package is cheap (``import ember`` imports it); IPython and the widgets are imported
only when the extension is loaded.
"""


def load_ipython_extension(ipython) -> None:
    """``%load_ext ember``: connect the kernel to a cluster (starting a local one unless EMBER_ADDRESS
    or ``%ember connect`` names one), register ``%ember`` and ``%%remote``, and route every task's
    output to the cell that submitted it."""
    from ember.kernel_ext.extension import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext ember``: shut Ember down in this kernel, stopping the cluster it started."""
    from ember.kernel_ext.extension import unload

    unload(ipython)
