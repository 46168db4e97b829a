"""Setting up one runtime env on a node, in a process of its own (``python -m`` this module).

The node manager starts it for an env its workers need and is not set up yet, and keeps serving
meanwhile (the leases for that env wait). It fetches the env's packages from the head's KV, unpacks
each once into the per-user runtime directory, and for ``pip`` creates a virtual environment per
distinct requirement list; everything is keyed by content, so a second node on the machine, or a
later cluster, finds it ready. A file lock per item makes concurrent setups wait for each other
instead of unpacking or installing twice.

Arguments: the JSON request ``{"env": <resolved env>, "head": <address>}`` and the path of a result
file, which gets ``{"ok": true, "cwd": ..., "paths": [...], "python": ...}`` or ``{"ok": false,
"error": ...}`` (pip's own message when an install fails).
"""

import fcntl
import hashlib
import io
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import zipfile

from ember.runtime import protocol, runtime_dir, transport
from ember.runtime.runtime_env import PACKAGE_PREFIX

PIP_TIMEOUT_S = 900


class SetupError(Exception):
    """A runtime env cannot be set up; the message says why, for the task or actor that needs it."""


def setup(env: dict, head: str) -> dict:
    """Make ``env`` ready on this machine; returns where a worker for it starts (cwd, sys.path
    entries first, python executable or None for the node's own)."""
    base = runtime_dir.private_subdir("runtime_env")
    result = {"cwd": None, "paths": [], "python": None}
    if env.get("working_dir"):
        path = _package(base, env["working_dir"], head)
        result["cwd"] = path
        result["paths"].append(path)
    for key in env.get("py_modules") or ():
        result["paths"].append(_package(base, key, head))
    if env.get("pip"):
        result["python"] = _venv(base, env["pip"])
    return result


def _locked(path: str):
    fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _package(base: str, key: str, head: str) -> str:
    if not all(c in "0123456789abcdef" for c in key) or len(key) != 64:
        raise SetupError(f"malformed runtime env package key {key!r}")
    folder = os.path.join(runtime_dir.private_subdir("runtime_env", "packages"), key)
    if os.path.isdir(folder):
        return folder
    lock = _locked(folder)
    try:
        if os.path.isdir(folder):
            return folder
        data = _fetch(head, PACKAGE_PREFIX + key.encode())
        if hashlib.sha256(data).hexdigest() != key:
            raise SetupError(f"runtime env package {key} does not match its hash")
        staging = tempfile.mkdtemp(prefix=f".{key}-", dir=os.path.dirname(folder))
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                # Names come from the submitter's zip; none may leave the folder.
                target = os.path.realpath(os.path.join(staging, info.filename))
                if not target.startswith(os.path.realpath(staging) + os.sep):
                    raise SetupError(f"runtime env package {key} has an unsafe path {info.filename!r}")
                archive.extract(info, staging)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(target, mode & 0o700 | 0o600)  # the user's code: closed to others, as the runtime dir
        os.rename(staging, folder)  # whole or not at all: a worker never sees half a package
        return folder
    finally:
        os.close(lock)


def _fetch(head: str, key: bytes) -> bytes:
    sock = transport.connect_checked(head, timeout=10.0)
    try:
        sock.send_multipart(protocol.encode({"op": protocol.KV_GET, "key": key, "rid": b"renv"}))
        if not sock.poll(60_000):
            raise SetupError(f"the head at {head} did not answer for runtime env package {key.decode()}")
        header, frames = protocol.decode(sock.recv_multipart())
    finally:
        sock.close(0)
    if not header.get("found") or not frames:
        raise SetupError(f"runtime env package {key.decode()} is not in the head's KV (was it uploaded?)")
    return bytes(frames[0])


def _venv(base: str, requirements: list) -> str:
    # Per interpreter too: a venv made from another Python would not run this one's packages.
    spec = json.dumps({"pip": requirements, "python": sys.executable, "version": sys.version})
    name = hashlib.sha256(spec.encode()).hexdigest()[:24]
    folder = os.path.join(runtime_dir.private_subdir("runtime_env", "pip"), name)
    python = os.path.join(folder, "bin", "python")
    ready = os.path.join(folder, ".ember-ready")
    if os.path.exists(ready):
        return python
    lock = _locked(folder)
    try:
        if os.path.exists(ready):
            return python
        shutil.rmtree(folder, ignore_errors=True)  # what a setup killed half-way left
        _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", folder], "python -m venv")
        _inherit_site_packages(python)
        # The node's pip installs into the venv: no ensurepip copy of pip in every venv.
        command = [sys.executable, "-m", "pip", "--python", python, "install", "--disable-pip-version-check"]
        _run([*command, *requirements], "pip install", cleanup=folder)
        with open(ready, "w") as file:
            file.write(spec)
        return python
    finally:
        os.close(lock)


def _inherit_site_packages(python: str) -> None:
    """``--system-site-packages`` reaches the base interpreter's packages; when the node runs from a
    virtual environment itself, its packages (Ember's own dependencies) come after the env's too."""
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    )
    purelib = out.stdout.strip()
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    if purelib and dirs:
        with open(os.path.join(purelib, "_ember_node_site.pth"), "w") as file:
            file.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")


def _run(command: list, what: str, cleanup: str | None = None) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise SetupError(f"{what} did not finish within {PIP_TIMEOUT_S} s") from None
    sys.stdout.write(done.stdout)
    sys.stdout.write(done.stderr)
    if done.returncode != 0:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        message = done.stderr.strip() or done.stdout.strip()
        raise SetupError(f"{what} failed (exit {done.returncode}):\n{message[-4000:]}")


def main() -> None:
    request = json.loads(sys.argv[1])
    result_path = sys.argv[2]
    try:
        result = {"ok": True, **setup(request["env"], request["head"])}
    except Exception as error:  # noqa: BLE001 - any failure is the env's failure, told to its tasks
        result = {
            "ok": False,
            "error": str(error) if isinstance(error, SetupError) else f"{type(error).__name__}: {error}",
        }
    fd = runtime_dir.open_private(result_path)
    with os.fdopen(fd, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main()
