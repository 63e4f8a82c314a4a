"""Liveness, readiness and metrics endpoints for a worker, on the worker's own event loop.

    GET /livez   200 "ok" whenever the loop answers (a stuck loop fails the probe)
    GET /readyz  200 "ready" when ready() is true, else 503 "not ready"
    GET /metrics 200, the registry in Prometheus' text format (only given a registry:
                 snf.runtime.worker.metrics)
    anything else: 404 (unknown path), 405 (method other than GET/HEAD), 400 (not HTTP)

Stdlib only: probes need no framework, and a handler on the worker's loop is
exactly what liveness should measure. Every answer is HTTP/1.1 with a
Content-Length and `Connection: close`, so probes never hold a connection open.
Nor can anyone else: at most MAX_CONNECTIONS are served at once (one more is
closed at once, unanswered), and each gets CONNECTION_TIMEOUT seconds for its
whole exchange, so a slowloris client costs a slot for seconds, never the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["start_health_server"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds to send the request head; a stalled client is dropped
CONNECTION_TIMEOUT = 10.0  # seconds for a whole exchange, the answer included
MAX_CONNECTIONS = 64  # served at once; probes and scrapes need a few
MAX_LINE = 8192  # bytes per request line or header line
MAX_HEADERS = 100

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def start_health_server(
    port: int,
    ready: Callable[[], bool],
    host: str = "0.0.0.0",
    registry: CollectorRegistry | None = None,
    max_connections: int = MAX_CONNECTIONS,
    timeouts: tuple[float, float] = (REQUEST_TIMEOUT, CONNECTION_TIMEOUT),
) -> asyncio.AbstractServer:
    """Serve /livez, /readyz (and /metrics, given a registry) on host:port (port 0
    picks a free port) until closed. `timeouts`: (request head, whole exchange)."""
    serving: set[asyncio.StreamWriter] = set()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(_read_head(reader), timeouts[0])
        status, body, extra = _answer(head, ready, registry)
        method = head[0] if head else ""
        writer.write(_response(status, body, extra, send_body=method != "HEAD"))
        await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(serving) >= max_connections:
            writer.transport.abort()  # full: closed at once, nothing read or written
            return
        serving.add(writer)
        done = False
        try:
            await asyncio.wait_for(exchange(reader, writer), timeouts[1])
            done = True
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            serving.discard(writer)
            if done:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            else:  # a client that stopped reading must not hold the close either
                writer.transport.abort()

    return await asyncio.start_server(handle, host, port, limit=MAX_LINE)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, path) of the request, or None if it is not an HTTP/1.x request."""
    try:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)  # connected and closed: no answer
        parts = line.decode("latin-1").split()
        # Drain the headers so the client is not reset while still sending them.
        for _ in range(MAX_HEADERS):
            if (await reader.readline()).strip() == b"":
                break
        else:
            return None
    except ValueError:  # a line longer than MAX_LINE
        return None
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, _ = parts
    return method, target.split("?", 1)[0]


def _answer(
    head: tuple[str, str] | None,
    ready: Callable[[], bool],
    registry: CollectorRegistry | None,
) -> tuple[int, str | bytes, dict[str, str]]:
    if head is None:
        return 400, "bad request\n", {}
    method, path = head
    paths = ("/livez", "/readyz", "/metrics") if registry is not None else ("/livez", "/readyz")
    if path not in paths:
        return 404, "not found\n", {}
    if method not in ("GET", "HEAD"):
        return 405, "method not allowed\n", {"Allow": "GET, HEAD"}
    if path == "/livez":
        return 200, "ok\n", {}
    if path == "/metrics":
        assert registry is not None
        try:
            return 200, generate_latest(registry), {"Content-Type": CONTENT_TYPE_LATEST}
        except Exception:  # a broken collector fails the scrape, never the probe server
            log.exception("metrics collection failed")
            return 500, "metrics collection failed\n", {}
    try:
        is_ready = bool(ready())
    except Exception:  # a failing check means "not ready", never a dead probe server
        log.exception("readiness check failed")
        is_ready = False
    return (200, "ready\n", {}) if is_ready else (503, "not ready\n", {})


def _response(status: int, body: str | bytes, extra: dict[str, str], *, send_body: bool) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": str(len(data)),  # HEAD announces the GET body's length
        "Cache-Control": "no-store",
        "Connection": "close",
        **extra,
    }
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data if send_body else b"")
