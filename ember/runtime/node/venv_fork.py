"""Workers for a pip env forked from the node's template process instead of exec'ing the venv's python.

A plain worker is forked from the node manager, which has Ember imported already (milliseconds); a
fresh interpreter in the venv takes hundreds of milliseconds to import Ember again. A forked worker
can run in the venv as well when putting the venv's site-packages first on ``sys.path`` gives it what
the venv's interpreter would import: true unless the template has already imported a module the venv
provides (its copy, of the node's version, would stay in ``sys.modules``). So:

    venv provides no module the template imported  -> fork, enter the venv (sys.path, sys.prefix, ...)
    otherwise (or EMBER_WORKER_EXEC=1)             -> exec the venv's python, as before (debug log says why)

What differs from an exec'd worker: the node's own packages stay on ``sys.path`` after the venv's (an
exec'd one reaches them through the venv's ``.pth`` file, see runtime_env_setup), and the interpreter's
startup settings (``-X`` options, PYTHON* variables read at startup) are the node's.
"""

import importlib
import logging
import os
import site
import sys
import sysconfig

logger = logging.getLogger(__name__)

NODE_SITE_PTH = "_ember_node_site.pth"  # written into every venv by runtime_env_setup
_NOT_MODULES = (".dist-info", ".egg-info", ".data", ".pth", ".txt")


def site_dirs(venv: str) -> list:
    """The venv's site-packages directories (purelib, then platlib when it differs)."""
    paths = sysconfig.get_paths(vars={"base": venv, "platbase": venv})
    dirs = []
    for name in ("purelib", "platlib"):
        if paths[name] not in dirs and os.path.isdir(paths[name]):
            dirs.append(paths[name])
    return dirs


def top_level_names(entries: list) -> set:
    """The importable top-level names a site-packages directory with these entries (file and folder
    names) provides: packages, modules and extension modules; not metadata, caches or .pth files."""
    names = set()
    for entry in entries:
        if entry.startswith(("_ember_", "__pycache__", ".")) or entry.endswith(_NOT_MODULES):
            continue
        names.add(entry.split(".", 1)[0])  # "six.py", "yaml/", "_speedups.cpython-312-x86_64-linux-gnu.so"
    return names


def conflicts(provided: set, loaded) -> list:
    """The names the venv provides that the template has already imported (``loaded``: sys.modules)."""
    return sorted(name for name in provided if name in loaded)


class VenvForks:
    """Per venv: whether its workers may be forked (cached: the template's modules only grow, so a
    venv that conflicts once always does; one that does not is checked again at each start)."""

    def __init__(self):
        self.provided: dict[str, set] = {}
        self.exec_only: set = set()

    def plan(self, python: str) -> list | None:
        """The venv's site dirs when a worker for the venv of ``python`` can be forked, else None."""
        venv = os.path.dirname(os.path.dirname(python))
        if venv in self.exec_only or os.environ.get("EMBER_WORKER_EXEC") == "1":
            return None
        dirs = site_dirs(venv)
        if venv not in self.provided:
            names = set()
            for folder in dirs:
                names |= top_level_names(os.listdir(folder))
            self.provided[venv] = names
        clash = conflicts(self.provided[venv], sys.modules)
        if clash or not dirs:
            self.exec_only.add(venv)
            logger.debug(
                "workers for the venv %s exec its python: the node has already imported %s, which it provides",
                venv,
                ", ".join(clash) or "(no site-packages found)",
            )
            return None
        return dirs


def enter(venv: str, dirs: list) -> None:
    """In a forked worker: make this interpreter import as the venv's would (its site-packages first,
    their .pth files run) and report the venv as its prefix and executable."""
    before = list(sys.path)
    known = {os.path.normcase(path) for path in before}
    for folder in dirs:
        if os.path.normcase(folder) not in known:
            sys.path.append(folder)
            known.add(os.path.normcase(folder))
        for name in sorted(os.listdir(folder)):
            # The node's own site dirs (NODE_SITE_PTH) are on our path already, their .pth files run at our
            # start: running them again would add a second copy of their import hooks.
            if name.endswith(".pth") and name != NODE_SITE_PTH:
                site.addpackage(folder, name, known)
    added = [path for path in sys.path if path not in before]
    sys.path[:] = added + before
    sys.prefix = sys.exec_prefix = venv
    sys.executable = os.path.join(venv, "bin", "python")
    importlib.invalidate_caches()
