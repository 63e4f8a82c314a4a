"""The worker's probe and metrics server (snf.runtime.worker.health) on 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from snf.runtime.worker.health import start_health_server

Check = Callable[[int], Awaitable[None]]


def serve(ready: Callable[[], bool], check: Check, **limits: Any) -> None:
    """Start the server on a free port, run check(port) against it, close it."""

    async def main() -> None:
        server = await start_health_server(0, ready, host="127.0.0.1", **limits)
        port = server.sockets[0].getsockname()[1]
        try:
            await check(port)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def raw(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes, read until the server closes: (status line, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # EOF only because of Connection: close
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: kube-probe\r\n\r\n".encode()


def test_livez_is_ok_with_http11_framing() -> None:
    async def check(port: int) -> None:
        status, headers, body = await raw(port, get("/livez"))
        assert status == "HTTP/1.1 200 OK"
        assert body == b"ok\n"
        assert headers["Content-Length"] == str(len(body))
        assert headers["Connection"] == "close"

    serve(lambda: False, check)  # liveness does not depend on readiness


def test_readyz_follows_the_ready_callable() -> None:
    state = {"ready": False}

    async def check(port: int) -> None:
        status, _, body = await raw(port, get("/readyz"))
        assert (status, body) == ("HTTP/1.1 503 Service Unavailable", b"not ready\n")
        state["ready"] = True
        status, _, body = await raw(port, get("/readyz"))
        assert (status, body) == ("HTTP/1.1 200 OK", b"ready\n")
        state["ready"] = False
        status, _, _ = await raw(port, get("/readyz?verbose=1"))  # query strings are ignored
        assert status == "HTTP/1.1 503 Service Unavailable"

    serve(lambda: state["ready"], check)


def test_a_failing_readiness_check_answers_503() -> None:
    def broken() -> bool:
        raise RuntimeError("consumer not assigned")

    async def check(port: int) -> None:
        status, _, _ = await raw(port, get("/readyz"))
        assert status == "HTTP/1.1 503 Service Unavailable"
        status, _, _ = await raw(port, get("/livez"))  # and the server keeps serving
        assert status == "HTTP/1.1 200 OK"

    serve(broken, check)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get("/"), "HTTP/1.1 404 Not Found"),
        (get("/metrics"), "HTTP/1.1 404 Not Found"),  # no registry given
        (get("/livez", "POST"), "HTTP/1.1 405 Method Not Allowed"),
        (b"hello\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /livez SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ],
)
def test_other_requests_are_refused(request_bytes: bytes, status: str) -> None:
    async def check(port: int) -> None:
        got, headers, body = await raw(port, request_bytes)
        assert got == status
        assert headers["Content-Length"] == str(len(body))
        if got.startswith("HTTP/1.1 405"):
            assert headers["Allow"] == "GET, HEAD"

    serve(lambda: True, check)


def test_head_sends_the_length_but_no_body() -> None:
    async def check(port: int) -> None:
        status, headers, body = await raw(port, get("/livez", "HEAD"))
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Length"] == "3"
        assert body == b""

    serve(lambda: True, check)


def test_a_standard_http_client_reads_the_answers() -> None:
    def fetch(port: int, path: str) -> tuple[int, bytes, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Connection")
        finally:
            conn.close()

    async def check(port: int) -> None:
        assert await asyncio.to_thread(fetch, port, "/livez") == (200, b"ok\n", "close")
        assert await asyncio.to_thread(fetch, port, "/readyz") == (200, b"ready\n", "close")
        assert (await asyncio.to_thread(fetch, port, "/nope"))[0] == 404

    serve(lambda: True, check)


def test_a_client_that_connects_and_leaves_does_not_stop_the_server() -> None:
    async def check(port: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()  # no request at all
        await writer.wait_closed()
        status, _, _ = await raw(port, get("/livez"))
        assert status == "HTTP/1.1 200 OK"

    serve(lambda: True, check)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the server closes (or resets) the connection within `within` seconds."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionResetError:
        return True


async def livez_within(port: int, seconds: float) -> str:
    """The status of /livez, retried while a slot is still being freed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return (await raw(port, get("/livez")))[0]
        except (ConnectionError, ValueError):  # closed unanswered: the server was full
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def test_connections_past_the_cap_are_closed_at_once() -> None:
    async def check(port: int) -> None:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/livez"))
        started = time.monotonic()
        assert await closed_by_server(reader, 2.0)  # unanswered, long before any timeout
        assert time.monotonic() - started < 2.0
        writer.close()
        for _, w in idle[:1]:  # one slot comes free: probes are answered again
            w.close()
        assert await livez_within(port, 2.0) == "HTTP/1.1 200 OK"
        for _, w in idle[1:]:
            w.close()

    serve(lambda: True, check, max_connections=4, timeouts=(30.0, 30.0))


def test_a_slowloris_client_is_dropped_and_frees_its_slot() -> None:
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /livez HTTP/1.1\r\n")
        started = time.monotonic()

        async def trickle() -> None:  # a header byte at a time, never the blank line
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        try:
            assert await closed_by_server(reader, 5.0)
        finally:
            task.cancel()
        assert 0.2 <= time.monotonic() - started < 5.0
        # Its one slot is free again (max_connections=1).
        assert await livez_within(port, 2.0) == "HTTP/1.1 200 OK"

    serve(lambda: True, check, max_connections=1, timeouts=(0.2, 1.0))


def test_probes_are_served_while_the_loop_is_busy_with_other_tasks() -> None:
    async def check(port: int) -> None:
        async def worker() -> None:  # a cooperative task sharing the loop, like Faust agents
            while True:
                await asyncio.sleep(0)

        task = asyncio.create_task(worker())
        try:
            status, _, _ = await raw(port, get("/livez"))
            assert status == "HTTP/1.1 200 OK"
        finally:
            task.cancel()

    serve(lambda: True, check)


def metrics_server(registry: CollectorRegistry, check: Check) -> None:
    async def main() -> None:
        server = await start_health_server(0, lambda: True, host="127.0.0.1", registry=registry)
        try:
            await check(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_metrics_answers_the_registry_in_prometheus_text_format() -> None:
    registry = CollectorRegistry()
    counter = Counter("snf_probe_test", "a test counter", ["function"], registry=registry)
    counter.labels("fw").inc(3)

    async def check(port: int) -> None:
        status, headers, body = await raw(port, get("/metrics"))
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert headers["Content-Length"] == str(len(body))
        samples = {
            (s.name, tuple(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert samples[("snf_probe_test_total", (("function", "fw"),))] == 3
        counter.labels("fw").inc()  # every scrape reads the registry afresh
        _, _, again = await raw(port, get("/metrics"))
        assert b'snf_probe_test_total{function="fw"} 4.0' in again
        status, headers, body = await raw(port, get("/metrics", "HEAD"))
        assert (status, body) == ("HTTP/1.1 200 OK", b"")
        assert int(headers["Content-Length"]) > 0
        status, _, _ = await raw(port, get("/metrics", "POST"))
        assert status == "HTTP/1.1 405 Method Not Allowed"
        status, _, body = await raw(port, get("/livez"))  # the probes are unchanged
        assert (status, body) == ("HTTP/1.1 200 OK", b"ok\n")

    metrics_server(registry, check)


def test_a_failing_collector_fails_the_scrape_not_the_server() -> None:
    class Broken(Collector):
        def collect(self) -> Iterator[Metric]:
            raise RuntimeError("boom")

    registry = CollectorRegistry()
    registry.register(Broken())

    async def check(port: int) -> None:
        status, _, _ = await raw(port, get("/metrics"))
        assert status == "HTTP/1.1 500 Internal Server Error"
        status, _, _ = await raw(port, get("/livez"))
        assert status == "HTTP/1.1 200 OK"

    metrics_server(registry, check)
