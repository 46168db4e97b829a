"""The dashboard's HTTP server (Ray's dashboard port): JSON endpoints for scripts and the Jobs REST API.

Data flow::

    cluster process (head) --binds the listening socket--> fd passed to
        python -m ember.dashboard.server --fd N   (its own process: uvicorn + starlette)
            --ZeroMQ, the cluster secret--> head (GET_NODES, STATE_QUERY, KV)
            --ember.init(), on the first job--> detached JobSupervisor actors (ember/dashboard/jobs.py)
    browsers, scripts, JobSubmissionClient --HTTP--> dashboard

Why a separate process: uvicorn's event loop and starlette's request handling would otherwise share
the head's poll loop and its GIL; a busy dashboard must never delay a heartbeat or an actor
creation. Why the head binds the socket: the URL (port 0, a busy default port) is known the moment
the cluster prints its JSON line, without waiting for the dashboard process to import its web stack.
"""

import logging
import os
import socket
import subprocess
import sys

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8265  # Ray's dashboard port
PORT_VARIABLE = "EMBER_DASHBOARD_PORT"
URL_KEY = b"dashboard:url"  # the head's KV: where the dashboard listens (init(address=...), ember status)
EVENTS_KEY = b"dashboard:events"  # the head's KV: its event hub's address, which the dashboard's pages follow


LINK_VARIABLE = "EMBER_DASHBOARD_LINK"


def link(url: str | None) -> str | None:
    """The address a notebook's widgets and ``%ember status`` give for the dashboard at ``url``.

    A browser showing JupyterLab may not reach the cluster's port (JupyterHub, a remote server), but
    reaches JupyterLab, which with jupyter-server-proxy forwards ``/proxy/PORT/`` to it. So:
    ``EMBER_DASHBOARD_LINK`` when set, a template with ``{host}``, ``{port}`` and the environment's
    variables (``/proxy/{port}/``, say); under JupyterHub ``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/``;
    else ``url`` itself. The dashboard's pages use relative links, so they work under such a prefix."""
    if url is None:
        return None
    template = os.environ.get(LINK_VARIABLE)
    if not template and os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        template = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/"
    if not template:
        return url
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        return template.format_map({**os.environ, "host": parts.hostname or "", "port": parts.port or ""})
    except (KeyError, ValueError, IndexError) as error:
        logger.warning("%s=%r does not fit (%s): linking to %s", LINK_VARIABLE, template, error, url)
        return url


def configured_port(port: int | None) -> int:
    """The port asked for: ``port`` if given, else EMBER_DASHBOARD_PORT, else 8265. 0 means any free
    port; -1 (or ``include_dashboard=False``) means no dashboard. Raises ValueError for anything else."""
    if port is None:
        text = os.environ.get(PORT_VARIABLE, "")
        try:
            port = int(text) if text.strip() else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"{PORT_VARIABLE} must be a port number, got {text!r}.") from None
    if isinstance(port, bool) or not isinstance(port, int) or not -1 <= port <= 65535:
        raise ValueError(f"The dashboard port must be an int from 0 to 65535 (-1: no dashboard), got {port!r}.")
    return port


def bind(host: str, port: int) -> tuple[socket.socket, str | None]:
    """A listening TCP socket on ``host``: on ``port``, or on a free port when that one is taken (the
    second value then says so, for the log). Raises OSError when ``host`` cannot be bound at all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    note = None
    try:
        sock.bind((host, port))
    except OSError as error:
        if port == 0:
            sock.close()
            raise
        sock.bind((host, 0))
        note = f"the dashboard's port {port} is taken ({error.strerror}); it listens on {sock.getsockname()[1]} instead"
    sock.listen(128)
    return sock, note


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start(head_address: str, host: str, port: int, session_dir: str) -> tuple[subprocess.Popen, str] | None:
    """Start the dashboard process beside a head at ``head_address``; returns (process, url), or None
    (with a log line) when the web stack is missing or the host cannot be bound. The process exits when
    its stdin (a pipe from us) closes, so it never outlives the head's process."""
    try:
        import starlette  # noqa: F401 - only to tell a missing web stack here, in the head's log
        import uvicorn  # noqa: F401
    except ImportError as error:
        logger.warning("no dashboard: %s (pip install uvicorn starlette)", error)
        return None
    try:
        sock, note = bind(host, port)
    except OSError as error:
        logger.warning("no dashboard: cannot listen on %s:%s: %s", host, port, error)
        return None
    if note:
        logger.warning("%s", note)
    url = url_of(sock)
    log_path = os.path.join(session_dir, "logs", "dashboard.log")
    from ember.runtime.runtime_dir import open_private

    log_fd = open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ember.dashboard.server",
                "--fd",
                str(sock.fileno()),
                "--head",
                head_address,
                "--url",
                url,
                "--session-dir",
                session_dir,
            ],
            stdin=subprocess.PIPE,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(sock.fileno(),),
        )
    finally:
        os.close(log_fd)
        sock.close()  # the child holds its own copy
    logger.info("dashboard at %s (pid %d)", url, process.pid)
    return process, url


def stop(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Close the dashboard's stdin (it exits), then make sure it did."""
    try:
        process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def url_from_head(head_address: str, timeout: float = 5.0) -> str | None:
    """The dashboard URL the head at ``head_address`` recorded (None: it has no dashboard). Needs
    the cluster's secret in the environment, as any connection to the head."""
    from ember.dashboard.server import HeadClient

    head = HeadClient(head_address)
    try:
        value = head.kv_get(URL_KEY) if timeout else None
    finally:
        head.close()
    return value.decode() if value else None
