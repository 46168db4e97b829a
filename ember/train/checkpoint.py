"""``Checkpoint``: a directory of files, local or on a remote filesystem, as Ray Train's.

A training loop writes files into a directory and reports ``Checkpoint.from_directory(dir)``; the
worker copies that directory into the run's storage before ``report`` returns, so the loop may
delete its own copy at once. Remote storage (``s3://``, ``gs://``, ``hdfs://``, or a pyarrow
filesystem object) goes through ``pyarrow.fs``; plain local paths use the standard library.
"""

import contextlib
import os
import shutil
import tempfile


def resolve(path: str, filesystem=None) -> tuple:
    """(filesystem or None for the local one, path within it)."""
    path = os.fspath(path)
    if filesystem is None and "://" not in path:
        return None, os.path.abspath(os.path.expanduser(path))
    import pyarrow.fs as pafs

    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(path)
    return filesystem, path


def upload(local_dir: str, filesystem, path: str) -> None:
    """Copy the local directory ``local_dir`` to ``path`` (merged into what is there)."""
    if filesystem is None:
        shutil.copytree(local_dir, path, dirs_exist_ok=True)
        return
    import pyarrow.fs as pafs

    filesystem.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)


def download(filesystem, path: str, local_dir: str) -> None:
    if filesystem is None:
        shutil.copytree(path, local_dir, dirs_exist_ok=True)
        return
    import pyarrow.fs as pafs

    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(path, local_dir, source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())


def delete(filesystem, path: str) -> None:
    if filesystem is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError, OSError):
        filesystem.delete_dir(path)


def makedirs(filesystem, path: str) -> None:
    if filesystem is None:
        os.makedirs(path, exist_ok=True)
    else:
        filesystem.create_dir(path, recursive=True)


class Checkpoint:
    """A directory of files that a training loop saved; ``path`` is where it lives, on
    ``filesystem`` (None: this machine's)."""

    def __init__(self, path, filesystem=None):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Checkpoint path must be a path string, got {type(path).__name__}.")
        self.filesystem, self.path = resolve(path, filesystem)

    @classmethod
    def from_directory(cls, path) -> "Checkpoint":
        """The checkpoint made of the local directory ``path`` (which must exist)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Checkpoint.from_directory expects a directory path, got {type(path).__name__}.")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Checkpoint.from_directory: {os.fspath(path)!r} is not a directory.")
        return cls(path)

    def to_directory(self, path=None) -> str:
        """Copy the checkpoint's files into the local directory ``path`` (a new temporary one by
        default) and return it."""
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="ember-checkpoint-")
        if self.filesystem is None and os.path.abspath(target) == self.path:
            return target
        download(self.filesystem, self.path, target)
        return target

    @contextlib.contextmanager
    def as_directory(self):
        """A local directory with the checkpoint's files, for reading: the checkpoint's own
        directory when it is local (no copy), else a temporary copy removed afterwards."""
        if self.filesystem is None:
            yield self.path
            return
        local = self.to_directory()
        try:
            yield local
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def __eq__(self, other):
        return isinstance(other, Checkpoint) and (self.path, _fs_key(self.filesystem)) == (
            other.path,
            _fs_key(other.filesystem),
        )

    def __hash__(self):
        return hash(self.path)

    def __repr__(self):
        where = "" if self.filesystem is None else f", filesystem={type(self.filesystem).__name__}"
        return f"Checkpoint(path={self.path!r}{where})"

    def __reduce__(self):
        return Checkpoint, (self.path, self.filesystem)


def _fs_key(filesystem):
    return None if filesystem is None else getattr(filesystem, "type_name", type(filesystem).__name__)
