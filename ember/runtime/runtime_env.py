"""Runtime environments on the submitting side: checked, packed, uploaded and keyed.

A user's ``runtime_env`` (Ray's fields ``env_vars``, ``working_dir``, ``py_modules``, ``pip``,
``excludes``) becomes a *resolved* env: plain data a node can set up without the submitter's files::

    {"env_vars": {...}, "working_dir": "<package key>", "py_modules": ["<package key>", ...],
     "pip": ["requirement", ...]}

Local directories (and single ``.py`` modules) are zipped here, deterministically (sorted names, fixed
timestamps), so the same content always gives the same bytes and the same key; each zip is stored in
the head's KV under its content hash, once (see docs/architecture.md for why the KV and not the
object store). A requirements file is read here, so the node sees only the requirement lines.

An env's key is the hash of its resolved form: nodes pool workers by it, and set each key up once.
The empty env has the key "" (the node's plain workers).
"""

import fnmatch
import hashlib
import io
import json
import os
import zipfile

from ember.runtime import protocol

FIELDS = ("env_vars", "working_dir", "py_modules", "pip", "excludes")
PACKAGE_PREFIX = b"runtime_env_pkg:"
# A package already in the head's KV, named by its content hash (what a job's submitter uploads
# through the dashboard, so the job's driver and its workers need none of the submitter's files).
PACKAGE_URI_SCHEME = "ember_pkg://"
# How an actor's death reads when its node could not set up its env (a job's supervisor's tells the job so).
ACTOR_SETUP_FAILED = "The actor's runtime_env could not be set up: "
MAX_BYTES_VARIABLE = "EMBER_RUNTIME_ENV_MAX_BYTES"
DEFAULT_MAX_BYTES = 100 * 1024 * 1024  # a package travels as one message and lives in the head's memory
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def check_runtime_env(runtime_env) -> None:
    """Raise TypeError/ValueError unless ``runtime_env`` uses only fields Ember supports, well typed."""
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}.")
    unsupported = sorted(set(runtime_env) - set(FIELDS))
    if unsupported:
        raise ValueError(
            f"runtime_env fields {unsupported} are not supported; Ember supports {', '.join(map(repr, FIELDS))}."
        )
    env_vars = runtime_env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise TypeError("runtime_env['env_vars'] must be a dict of str to str.")
    working_dir = runtime_env.get("working_dir")
    if working_dir is not None and not isinstance(working_dir, (str, os.PathLike)):
        raise TypeError(f"runtime_env['working_dir'] must be a local directory path, got {working_dir!r}.")
    modules = runtime_env.get("py_modules")
    if modules is not None and (
        not isinstance(modules, (list, tuple)) or not all(isinstance(m, (str, os.PathLike)) for m in modules)
    ):
        raise TypeError(f"runtime_env['py_modules'] must be a list of local paths, got {modules!r}.")
    pip = runtime_env.get("pip")
    if pip is not None and not isinstance(pip, (str, os.PathLike)):
        if not isinstance(pip, (list, tuple)) or not all(isinstance(r, str) and r.strip() for r in pip):
            raise TypeError(f"runtime_env['pip'] must be a list of requirements or a requirements file, got {pip!r}.")
    excludes = runtime_env.get("excludes")
    if excludes is not None and (
        not isinstance(excludes, (list, tuple)) or not all(isinstance(p, str) for p in excludes)
    ):
        raise TypeError(f"runtime_env['excludes'] must be a list of gitignore-style patterns, got {excludes!r}.")


def package_uri(key: str) -> str:
    """The ``working_dir``/``py_modules`` value naming a package uploaded under ``key``."""
    return PACKAGE_URI_SCHEME + key


def uri_key(value) -> str | None:
    """The package key a ``working_dir``/``py_modules`` value names when it is a package URI, else
    None (a local path). ValueError for a URI that is not a content hash."""
    if not isinstance(value, str) or not value.startswith(PACKAGE_URI_SCHEME):
        return None
    key = value[len(PACKAGE_URI_SCHEME) :]
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"{value!r} is not a package URI ({PACKAGE_URI_SCHEME} and a sha256 in hex).")
    return key


def env_key(resolved: dict | None) -> str:
    """The pool key of a resolved env: "" for none, else a short hash of its canonical form."""
    if not resolved:
        return ""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:20]


def merge(parent: dict | None, child: dict | None) -> dict:
    """A task's or actor's resolved env over its job's (or parent task's), as Ray merges them: the
    child's ``env_vars`` are added to the parent's; any other field the child sets replaces the parent's."""
    merged = dict(parent or {})
    for name, value in (child or {}).items():
        if name == "env_vars":
            merged["env_vars"] = {**merged.get("env_vars", {}), **value}
        else:
            merged[name] = value
    return {name: value for name, value in merged.items() if value}


def resolve(runtime_env: dict | None, upload) -> dict:
    """The resolved form of a user's ``runtime_env``: local paths packed and handed to ``upload(key,
    data)`` (which stores them once), a requirements file read. Raises ValueError naming a missing
    path or one whose package is over the size limit."""
    if not runtime_env:
        return {}
    check_runtime_env(runtime_env)
    excludes = list(runtime_env.get("excludes") or ())
    resolved: dict = {}
    if runtime_env.get("env_vars"):
        resolved["env_vars"] = dict(runtime_env["env_vars"])
    if runtime_env.get("working_dir") is not None:
        resolved["working_dir"] = _package_key(runtime_env["working_dir"], excludes, "working_dir", upload)
    if runtime_env.get("py_modules"):
        resolved["py_modules"] = [_package_key(m, excludes, "py_modules", upload) for m in runtime_env["py_modules"]]
    pip = runtime_env.get("pip")
    if pip:
        resolved["pip"] = _requirements(pip)
    return resolved


def upload_local(runtime_env: dict | None, upload) -> dict:
    """``runtime_env`` with its local ``working_dir`` and ``py_modules`` packed, handed to ``upload(key,
    data)`` and replaced by package URIs, and a pip requirements file replaced by its lines: what a job
    submitter sends, so nothing in it refers to the submitter's files. ValueError as ``resolve``."""
    if not runtime_env:
        return {}
    check_runtime_env(runtime_env)
    excludes = list(runtime_env.get("excludes") or ())
    portable = {name: value for name, value in runtime_env.items() if name != "excludes"}
    if runtime_env.get("working_dir") is not None:
        portable["working_dir"] = package_uri(_package_key(runtime_env["working_dir"], excludes, "working_dir", upload))
    if runtime_env.get("py_modules"):
        portable["py_modules"] = [
            package_uri(_package_key(module, excludes, "py_modules", upload)) for module in runtime_env["py_modules"]
        ]
    if runtime_env.get("pip"):
        portable["pip"] = _requirements(runtime_env["pip"])
    return portable


def _package_key(value, excludes: list, field: str, upload) -> str:
    """The key of a working_dir or py_modules entry: a package URI's, or a local path's packed and uploaded."""
    path = os.fspath(value)
    key = uri_key(path)
    if key is not None:
        return key
    if field == "working_dir":
        if not os.path.isdir(path):
            raise ValueError(f"runtime_env['working_dir'] {path!r} is not an existing local directory.")
        return _upload(pack(path, excludes, "working_dir"), upload)
    if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".py"))):
        raise ValueError(f"runtime_env['py_modules'] entry {path!r} is not a local directory or .py file.")
    return _upload(pack(path, excludes, "py_modules", as_module=True), upload)


def _requirements(pip) -> list:
    if isinstance(pip, (list, tuple)):
        return [r.strip() for r in pip]
    path = os.fspath(pip)
    try:
        with open(path) as file:
            lines = [line.split("#", 1)[0].strip() for line in file]
    except OSError as error:
        raise ValueError(f"runtime_env['pip'] requirements file {path!r} cannot be read: {error}") from None
    return [line for line in lines if line]


def _upload(data: bytes, upload) -> str:
    key = hashlib.sha256(data).hexdigest()
    upload(PACKAGE_PREFIX + key.encode(), data)
    return key


def max_bytes() -> int:
    raw = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    try:
        return int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        raise ValueError(f"{MAX_BYTES_VARIABLE} must be a whole number of bytes, got {raw!r}.") from None


def pack(path: str, excludes: list, field: str, as_module: bool = False) -> bytes:
    """Zip ``path`` (a directory's contents, or with ``as_module`` the directory or .py file itself,
    so it imports by its name) leaving out what ``excludes`` matches; ValueError over the size limit."""
    path = os.path.abspath(path)
    limit = max_bytes()
    root = os.path.dirname(path) if as_module else path
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    else:
        files = []
        for folder, dirs, names in os.walk(path):
            relative_folder = os.path.relpath(folder, root)
            dirs[:] = sorted(
                d for d in dirs if d != "__pycache__" and not excluded(_join(relative_folder, d), True, excludes)
            )
            for name in sorted(names):
                relative = _join(relative_folder, name)
                if not excluded(relative, False, excludes):
                    files.append((relative, os.path.join(folder, name)))
    total = sum(os.path.getsize(full) for _, full in files)
    if total > limit:
        raise ValueError(
            f"runtime_env[{field!r}] {path!r} is {total / 2**20:.1f} MiB, over the {limit / 2**20:.1f} MiB limit "
            f"({MAX_BYTES_VARIABLE}); leave out large files with runtime_env['excludes']."
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, full in sorted(files):
            info = zipfile.ZipInfo(relative, _ZIP_TIME)
            info.external_attr = (os.stat(full).st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as file:
                archive.writestr(info, file.read())
    return buffer.getvalue()


def _join(folder: str, name: str) -> str:
    return name if folder == "." else f"{folder}/{name}"


def excluded(relative: str, is_dir: bool, patterns: list) -> bool:
    """Whether a path (relative to the packed root, ``/``-separated) is left out by gitignore-style
    ``patterns``: a pattern with a ``/`` (other than a trailing one) matches from the root, one without
    matches a name at any depth; a trailing ``/`` matches directories only; ``!`` re-includes; the
    last matching pattern wins."""
    result = False
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if "/" in pattern:
            matched = _match_anchored(relative, pattern.lstrip("/"))
        else:
            matched = fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], pattern)
        if matched:
            result = not negate
    return result


def _match_anchored(relative: str, pattern: str) -> bool:
    if "**" in pattern:
        # ``a/**/b`` also matches ``a/b``: fnmatch's * crosses slashes, so try with and without.
        return fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(relative, pattern.replace("**/", ""))
    return len(relative.split("/")) == len(pattern.split("/")) and fnmatch.fnmatchcase(relative, pattern)


class RuntimeEnvs:
    """A client's resolved envs: each user ``runtime_env`` is packed and uploaded once per process
    (as Ray, later edits to a working_dir are not picked up by a running driver)."""

    def __init__(self, client):
        self.client = client
        self.base: dict = {}  # the job's env (a driver) or the env this worker was started with
        self._resolved: dict = {}

    def for_submission(self, runtime_env: dict | None) -> dict:
        """The resolved env a task or actor runs in: its own ``runtime_env`` merged over the base."""
        if not runtime_env:
            return self.base
        spec = json.dumps(runtime_env, sort_keys=True, default=os.fspath)
        own = self._resolved.get(spec)
        if own is None:
            own = self._resolved[spec] = resolve(runtime_env, self._upload)
        return merge(self.base, own)

    def _upload(self, key: bytes, data: bytes) -> None:
        self.client.request("head", {"op": protocol.KV_PUT, "key": key, "overwrite": False}, [data])
