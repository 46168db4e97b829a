"""The HTTP proxy: an actor that runs uvicorn with a starlette-free ASGI app of its own on a thread.

It long-polls the controller for the route table (route_prefix -> application's ingress
deployment), matches each request to the longest prefix, reads the body (at most
``max_body_size``: 413 beyond), and sends it to a replica through the same router handles use;
the replica answers with the whole response (a plain call), or with its first piece and a key
to stream the rest. Unknown routes get 404, a full queue 503, a user exception
500 with the error's text. Malformed HTTP is uvicorn's to refuse (400); the proxy carries on.
"""

import asyncio
import socket
import threading
import traceback
import uuid

import ember
from ember.serve import context as serve_context
from ember.serve import router as routing
from ember.serve.config import HTTPOptions
from ember.serve.exceptions import BackPressureError, DeploymentUnavailableError


def match_route(routes: dict, path: str):
    """The longest route prefix that ``path`` lies under (whole path segments only), or None."""
    best = None
    for prefix in routes:
        stripped = prefix.rstrip("/")
        if path == stripped or path.startswith(stripped + "/") or prefix == "/":
            if best is None or len(stripped) > len(best.rstrip("/")):
                best = prefix
    return best


class ProxyActor:
    """Runs the HTTP server; ``ready()`` returns its address once it accepts connections."""

    def __init__(self, http_options: dict):
        self.options = HTTPOptions.of(http_options)
        self.routes: dict = {}
        self.started = threading.Event()
        self.error = None
        self.server = None
        # Bind here, not in uvicorn: port 0 picks a free port, and the address is known at once.
        self.sock = socket.socket(socket.AF_INET6 if ":" in self.options.host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, the response's head and body (two writes)
        # meet the client's delayed ACK and every request waits 40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((self.options.host, self.options.port))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="serve-proxy", daemon=True)
        self.thread.start()

    def ready(self) -> str:
        self.started.wait(30)
        if self.error is not None:
            raise RuntimeError(f"The HTTP proxy failed to start: {self.error}")
        return f"http://{self.options.host}:{self.port}"

    def _serve(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            interface="asgi3",  # a bound method would otherwise be taken for an ASGI2 app
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=self.options.keep_alive_timeout_s,
        )
        self.server = uvicorn.Server(config)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        loop.create_task(self._poll_routes())
        try:
            loop.call_soon(self.started.set)
            loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        except BaseException as error:
            self.error = repr(error)
            self.started.set()

    async def _poll_routes(self) -> None:
        controller = ember.get_actor(serve_context.CONTROLLER_NAME, namespace=serve_context.SERVE_NAMESPACE)
        version = -1
        while True:
            try:
                version, routes = await controller.listen_for_routes.remote(version)
            except Exception:
                return
            self.routes = routes

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        prefix = match_route(self.routes, path)
        if prefix is None:
            return await _respond(send, 404, f"Path '{path}' not found. Ping http://.../-/routes for available routes.")
        body, refusal = await self._read_body(scope, receive)
        if refusal is not None:
            return await _respond(send, *refusal)
        app_name, deployment = self.routes[prefix]
        inner = {k: scope[k] for k in ("type", "http_version", "method", "scheme", "path", "query_string", "headers")}
        inner["raw_path"] = scope.get("raw_path")
        inner["client"], inner["server"] = scope.get("client"), scope.get("server")
        inner["root_path"] = self.options.root_path + ("" if prefix == "/" else prefix.rstrip("/"))
        inner["path"] = self.options.root_path + path
        headers = dict(scope["headers"])
        meta = {
            "http": True,
            "route": prefix,
            "request_id": headers.get(b"x-request-id", b"").decode() or uuid.uuid4().hex,
            "model_id": headers.get(b"serve_multiplexed_model_id", b"").decode(),
        }
        timeout_s = request_timeout(headers, self.options.request_timeout_s)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        router = routing.hub().router(f"{app_name}#{deployment}")
        if not router.listed.is_set():
            # A new router waits for its replica list; not on this loop, which serves every connection.
            await asyncio.get_running_loop().run_in_executor(None, router.listed.wait, routing.LIST_WAIT_S)
        try:
            sent = router.submit(meta, (inner, body), {}, False)
            if not isinstance(sent, tuple):
                sent = await self._until_sent(router, sent, deadline)
        except BackPressureError as error:
            return await _respond(send, 503, str(error))
        except DeploymentUnavailableError as error:
            return await _respond(send, 404, str(error))
        except TimeoutError:
            return await _respond(send, 408, _timeout_text(meta, timeout_s))
        await self._forward(send, router, sent, deadline, meta, timeout_s)

    async def _until_sent(self, router, future, deadline):
        """(ref, slot) once the router sends a queued request; TimeoutError past ``deadline``."""
        waiter = asyncio.wrap_future(future)
        if deadline is None:
            return await waiter
        # asyncio.wait, not wait_for: cancelling the router's future would orphan a request it sends.
        await asyncio.wait({waiter}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        if not waiter.done() and router.cancel(future):
            waiter.cancel()
            raise TimeoutError
        return await waiter

    async def _forward(self, send, router, sent, deadline, meta, timeout_s) -> None:
        ref, slot = sent
        error = None
        started = False
        release = True
        try:
            status, response_headers, chunk, stream_key = await _within(ref, deadline)
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            started = True
            await send({"type": "http.response.body", "body": chunk, "more_body": stream_key is not None})
            if stream_key is not None:
                # The rest of a streaming response, from the replica that holds it.
                ref = slot.handle.stream_http.remote(stream_key)
                while True:
                    try:
                        piece = await _within(ref.__anext__(), deadline)
                    except StopAsyncIteration:
                        break
                    await send({"type": "http.response.body", "body": await piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # As in Ray: the request is cancelled on its replica, and the client gets 408 (or, once the
            # response started, a connection closed before its end). The replica's slot is free once
            # the cancellation lands there.
            try:
                ember.cancel(ref)
            except Exception:
                pass  # it finished meanwhile
            if not isinstance(ref, ember.ObjectRefGenerator):
                release = False
                ref.future().add_done_callback(lambda done: router.release(slot, done.exception()))
            if not started:
                await _respond(send, 408, _timeout_text(meta, timeout_s))
        except Exception as failure:
            error = failure
            if not started:
                await _respond(send, 500, _error_text(failure))
        finally:
            if release:
                router.release(slot, error)

    async def _read_body(self, scope, receive):
        limit = self.options.max_body_size
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return b"", (413, f"Request body too large: {int(value)} bytes, the limit is {limit}.")
                except ValueError:
                    return b"", (400, "Malformed Content-Length header.")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "The client disconnected.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", (413, f"Request body too large: over {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.should_exit = True


def request_timeout(headers: dict, default_s: float | None) -> float | None:
    """The request's time limit: the ``x-request-timeout-seconds`` header (Ray's; 0 or less: none)
    when it holds a number, else ``request_timeout_s`` from the HTTP options."""
    value = headers.get(b"x-request-timeout-seconds")
    if value is None:
        return default_s
    try:
        timeout_s = float(value)
    except ValueError:
        return default_s
    return timeout_s if timeout_s > 0 else None


async def _within(awaitable, deadline: float | None):
    """Await ``awaitable``; TimeoutError (leaving it running) once the loop's clock passes ``deadline``."""
    if deadline is None:
        return await awaitable
    future = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({future}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    if not done:
        future.cancel()
        raise TimeoutError
    return future.result()


def _timeout_text(meta: dict, timeout_s: float) -> str:
    return f"Request {meta['request_id']} timed out after {timeout_s}s."


def _error_text(error: BaseException) -> str:
    text = str(error) or "".join(traceback.format_exception_only(type(error), error))
    return f"Internal Server Error\n\n{text}"


async def _respond(send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
