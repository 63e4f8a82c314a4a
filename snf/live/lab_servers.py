"""The lab's servers: two HTTP servers and iperf3 in the server namespace, and its blob.

Mechanism only (snf.live.lab decides and reports): start a server through
`ip netns exec`, tell whether a recorded pid is still that server (its cmdline,
since pids get reused), whether it listens, and stop it. The blob the HTTP
servers serve is deterministic: chunk i of 1 MiB is SHAKE-256("snf lab blob i"),
so any run of any version of snf serves the same bytes for the same size.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BLOB_NAME",
    "HTTP_PORTS",
    "IPERF_PORT",
    "Server",
    "alive",
    "listening",
    "planned",
    "serve",
    "start",
    "stop",
    "wait_listening",
    "write_blob",
]

HTTP_PORTS = (8080, 8081)  # two, so a firewall test can allow one port and block the other
IPERF_PORT = 5201  # iperf3's default
BLOB_NAME = "blob.bin"
MIB = 1 << 20
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column

_children: dict[int, subprocess.Popen[bytes]] = {}  # ours, reaped when stopped


@dataclass(frozen=True)
class Server:
    """One server process: `argv` is its exact cmdline once `ip netns exec` has run it."""

    name: str
    port: int
    pid: int
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Server:
        return cls(**{**data, "argv": tuple(data["argv"])})


def write_blob(directory: Path, mib: int) -> str:
    """`mib` MiB of deterministic pseudo-random bytes in directory/blob.bin; their sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with (directory / BLOB_NAME).open("wb") as fh:
        for i in range(mib):
            chunk = hashlib.shake_256(b"snf lab blob %d" % i).digest(MIB)
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def serve(
    netns_exec: list[str], state: Path, iperf3: str | None, started: Callable[[Server], None]
) -> list[Server]:
    """Start the servers on state/www, calling `started` with each as soon as it runs
    (so the caller records it); returns those not listening within 10 s."""
    servers = []
    for name, port, argv in planned(state / "www", iperf3):
        servers.append(start(netns_exec, name, port, argv, state / f"{name}.log"))
        started(servers[-1])
    return wait_listening(servers)


def planned(served: Path, iperf3: str | None) -> list[tuple[str, int, tuple[str, ...]]]:
    """(name, port, argv) of each server to run; iperf3 only when it is installed."""
    http = (sys.executable, "-m", "http.server")
    servers = [
        (f"http-{port}", port, (*http, str(port), "--bind", "0.0.0.0", "--directory", str(served)))
        for port in HTTP_PORTS
    ]
    if iperf3:
        servers.append(("iperf3", IPERF_PORT, (iperf3, "-s", "-4", "-p", str(IPERF_PORT))))
    return servers


def start(netns_exec: list[str], name: str, port: int, argv: tuple[str, ...], log: Path) -> Server:
    """Run argv as `netns_exec + argv`, detached (its own session) and logging to `log`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*netns_exec, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `snf lab up`; a Ctrl-C in its shell spares it
        )
    _children[proc.pid] = proc
    return Server(name, port, proc.pid, argv, str(log))


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(raw.decode(errors="replace").split("\0")[:-1])


def alive(server: Server) -> bool:
    """Its pid still runs its argv: not the `ip netns exec` before it, not a zombie
    (whose cmdline is empty), not another process that got the pid."""
    return _cmdline(server.pid) == server.argv


def listening(server: Server) -> bool:
    """It listens on its port, seen through /proc/PID/net: that is its own namespace's
    table once `alive` (ip has entered the namespace before it exec'd the server)."""
    if not alive(server):
        return False
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{server.pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == server.port:
                return True
    return False


def wait_listening(servers: list[Server], timeout: float = 10.0) -> list[Server]:
    """Wait until every server listens; returns those that do not by then (or died)."""
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting and time.monotonic() < deadline:
        waiting = [s for s in waiting if not listening(s) and not _exited(s)]
        if waiting:
            time.sleep(0.02)
    return [s for s in servers if not listening(s)]


def _exited(server: Server) -> bool:
    child = _children.get(server.pid)
    return child is not None and child.poll() is not None


def stop(server: Server, timeout: float = 3.0) -> str:
    """SIGTERM (then SIGKILL) the server if its pid is still it; says what it did."""
    if not alive(server):
        _reap(server.pid)
        return f"{server.name} (pid {server.pid}) was not running"
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(server) and time.monotonic() < deadline:
        _reap(server.pid)
        time.sleep(0.02)
    if alive(server):
        os.kill(server.pid, signal.SIGKILL)
    _reap(server.pid, wait=True)
    return f"stopped {server.name} (pid {server.pid})"


def _reap(pid: int, wait: bool = False) -> None:
    """Collect our own child's exit status (a zombie keeps its pid until then)."""
    child = _children.get(pid)
    if child is None:
        return
    if wait:
        child.wait(timeout=5)
    if child.poll() is not None:
        del _children[pid]
