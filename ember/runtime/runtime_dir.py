"""The per-user runtime directory and the private files in it.

Everything Ember writes for a cluster (session directories with logs and spill files, the record
of what ``ember start`` started, the cluster files that ``address="auto"`` reads, with the cluster's
secret inside) lives in one directory per user::

    $XDG_RUNTIME_DIR/ember     when the session has one (a tmpfs of this user's, on systemd machines)
    /tmp/ember-<uid>           otherwise

The directory is made 0700, and before any file in it is read or trusted we check that it is a
real directory (not a symlink) owned by us and closed to others: in /tmp another user can create
the name first, and a directory of theirs could feed us a cluster file naming their cluster.
Files are made 0600 and a cluster file is believed only when its owner is this user.

Cluster files are named after the cluster process's pid and hold ``address`` and the secret,
one per line.
"""

import os
import stat

import psutil

TOKEN_VARIABLE = "EMBER_CLUSTER_TOKEN"  # as ember.runtime.transport reads it


class UnsafeRuntimeDirError(PermissionError):
    """The runtime directory exists but is not this user's private directory."""


def runtime_dir() -> str:
    """This user's runtime directory, created 0700 if missing; raises UnsafeRuntimeDirError when the
    path exists and is not a directory of ours that only we can enter."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return ensure_private_dir(
        os.path.join(base, "ember") if base and _is_private_dir(base) else f"/tmp/ember-{os.getuid()}"
    )


def ensure_private_dir(path: str) -> str:
    """Create ``path`` 0700 if missing; raise UnsafeRuntimeDirError unless it is a directory (not a
    symlink) owned by this user; close it to others if it was opened up. Returns ``path``."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UnsafeRuntimeDirError(
            f"Ember's runtime directory {path} is not a directory owned by this user (uid {os.getuid()}): "
            "someone else may have created it to read or plant session files. Remove it and try again."
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours, but opened up (by a umask or by hand): close it again
    return path


def _is_private_dir(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & 0o077


def private_subdir(*names: str) -> str:
    """``runtime_dir()/names...``, created 0700."""
    path = runtime_dir()
    for name in names:  # each level 0700 (os.makedirs gives the mode to the last one only)
        path = os.path.join(path, name)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    return path


def open_private(path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """A descriptor for ``path``, created 0600 and never through a symlink."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o600)


def copy_private(source: str, target: str) -> None:
    """Copy a file into a new 0600 file (spilling and restoring objects: their bytes are the user's data)."""
    with open(source, "rb") as src:
        fd = open_private(target)
        try:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, src.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd)


# --- cluster files (for address="auto") -------------------------------------------------------------
def cluster_dir() -> str:
    return private_subdir("clusters")


def write_cluster_file(pid: int, address: str, token: str) -> None:
    """Record a cluster started on this machine, with its secret, readable by this user only."""
    if not token:
        raise ValueError("A cluster file needs the cluster's secret.")
    path = os.path.join(cluster_dir(), str(pid))
    with open(open_private(path), "w") as f:
        f.write(f"{address}\n{token}")


def remove_cluster_file(pid: int) -> None:
    try:
        os.unlink(os.path.join(cluster_dir(), str(pid)))
    except FileNotFoundError:
        pass


def _read_owned(path: str) -> str | None:
    """The text of ``path`` if it is a regular file owned by this user; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with open(fd) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        return f.read()


def live_clusters() -> list:
    """(address, secret) of the clusters this user started on this machine whose process is alive,
    newest first. Files of dead clusters are removed; files owned by anyone else are ignored."""
    directory = cluster_dir()
    found = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        text = _read_owned(path)
        if text is None:
            continue
        try:
            alive = "ember.runtime.cluster" in " ".join(psutil.Process(int(name)).cmdline())
        except (ValueError, psutil.Error):
            alive = False
        if not alive:
            try:
                os.unlink(path)  # left by a cluster that was killed
            except OSError:
                pass
            continue
        address, _, token = text.strip().partition("\n")
        found.append((os.stat(path).st_mtime, address, token.strip()))
    return [(address, token) for _, address, token in sorted(found, reverse=True)]


def secret_for(address: str) -> str | None:
    """The secret of this user's live cluster at ``address`` on this machine, if there is one."""
    for known, token in live_clusters():
        if known == address and token:
            return token
    return None


def missing_secret_message(address: str) -> str:
    """What a process that lacks a cluster's secret (or holds a wrong one) is told."""
    return (
        f"The Ember cluster at {address} requires its secret, and this process does not hold it: every Ember "
        f"socket admits only processes that prove they have the cluster's secret. Set {TOKEN_VARIABLE} to it: "
        "`ember start --head` prints it, and on the head's machine it is in the cluster file "
        f"{os.path.join(runtime_dir(), 'clusters')}/<pid> of the user who started the cluster "
        '(init(address="auto") reads it there, for that user only).'
    )
