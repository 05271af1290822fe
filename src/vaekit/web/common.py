"""What both web apps share: the optional imports, JSON bodies read under a size limit, one-line
JSON errors, and starting uvicorn on a chosen address."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Awaitable, Callable

from ..errors import UsageError
from ..apps.service import RequestError

MAX_BODY = 16 * 1024 * 1024  # bytes of one request body

log = logging.getLogger("vaekit.web")


def need_web() -> None:
    """Starlette and uvicorn, or one line naming the extra to install."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("the web server needs Starlette and uvicorn: pip install 'vaekit[explore]'") from None


def error(message: str, status: int):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def json_response(result: dict[str, Any]):
    """``result`` as JSON; a result with a non-finite number (inputs far outside the training data can
    overflow the networks) is a 422 with one line, never a 500 or invalid JSON."""
    from starlette.responses import JSONResponse

    try:
        return JSONResponse(result)
    except ValueError:
        raise RequestError("the model's output for these inputs is not finite: they lie far outside the data "
                           "it was trained on") from None


async def read_json(request: Any, max_body: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object, read at most ``max_body`` bytes; RequestError otherwise."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > max_body:
                raise RequestError(f"the request body has {int(length)} bytes; at most {max_body}", 413)
        except ValueError:
            raise RequestError("bad Content-Length header", 400) from None
    body = await read_body(request, max_body)
    if not body.strip():
        raise RequestError("the request has no body: send a JSON object", 400)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError("the request body is not valid JSON", 400) from None
    if not isinstance(value, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(value).__name__}", 422)
    return value


async def read_body(request: Any, max_body: int = MAX_BODY) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise RequestError(f"the request body is over {max_body} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def endpoint(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A route handler whose RequestError (or any VaekitError) becomes a 4xx with one line; anything
    else is a bug: logged with its traceback, answered 500 with one line."""
    import functools

    from ..errors import VaekitError

    @functools.wraps(fn)
    async def wrapped(request: Any) -> Any:
        try:
            return await fn(request)
        except RequestError as e:
            return error(str(e), e.status)
        except VaekitError as e:
            return error(str(e), 422)
        except Exception as e:  # noqa: BLE001 - a server answers; the traceback goes to the log
            log.exception("internal error in %s", request.url.path)
            return error(f"internal error: {type(e).__name__}", 500)

    return wrapped


def json_post(method: Callable[[dict[str, Any]], dict[str, Any]], max_body: int = MAX_BODY):
    """A POST route calling ``method(body)`` on the request's JSON object in a worker thread (the
    server keeps answering meanwhile), its result sent as JSON."""
    from starlette.concurrency import run_in_threadpool

    @endpoint
    async def handler(request: Any) -> Any:
        body = await read_json(request, max_body)
        return json_response(await run_in_threadpool(method, body))

    return handler


def check_address(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if not host:
        raise UsageError("--host must not be empty")


def serve_app(app: Any, host: str, port: int, what: str) -> int:
    """Run ``app`` until Ctrl-C; prints the address (the real port when 0 was asked for)."""
    import socket

    import uvicorn

    check_address(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it a kept-alive
    # client waits 40 ms for each answer (Nagle against delayed ACKs)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # clients that connect before the server loop starts wait in the backlog
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"{what} at http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("stopped", file=sys.stderr)
    return 0
