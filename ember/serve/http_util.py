"""Turning a user's return value into an ASGI response, and running an ASGI app against one
buffered request while streaming what it sends back."""

import asyncio


def to_response(result):
    """A starlette Response for whatever ``__call__`` returned (a Response passes unchanged)."""
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

    if isinstance(result, Response):
        return result
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), media_type="application/octet-stream")
    if isinstance(result, str):
        return PlainTextResponse(result)
    if hasattr(result, "__aiter__") or hasattr(result, "__next__"):
        return StreamingResponse(result)
    return JSONResponse(result)


async def run_asgi(app, scope: dict, receive):
    """Run ``app`` on one request; yields (status, headers, body, more_body) once the first body
    chunk is ready, then each later chunk's bytes. An error before the response started raises."""
    queue: asyncio.Queue = asyncio.Queue()

    async def send(message):
        await queue.put(message)

    async def run():
        try:
            await app(scope, receive, send)
        finally:
            await queue.put(None)

    task = asyncio.get_running_loop().create_task(run())
    start = None
    try:
        while True:
            message = await queue.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                start = (message["status"], [tuple(h) for h in message.get("headers", [])])
                continue
            if message["type"] != "http.response.body":
                continue
            more = message.get("more_body", False)
            body = message.get("body", b"")
            if start:
                yield (start[0], start[1], body, more)
                start = False
            else:
                yield body
            if not more:
                break
        if start:  # started, no body sent
            yield (start[0], start[1], b"", False)
    finally:
        if not task.done():
            task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        if start is None:  # nothing was sent: the caller turns the error into a 500
            raise
