"""snf lab (snf.live.lab): the namespaces, arms, neighbours and servers it builds,
what it refuses to touch, and that `down` removes exactly what it made.

Needs root and `ip netns` (no Kafka). One lab serves the module; the tests that
must build their own (a clash, a failed up, a partial lab) use other names. A
tiny AF_PACKET forwarder in the test stands in for snf between the two arms,
so ping and HTTP from the client reach the server end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snf.cli import lab_command
from snf.live import lab as lab_mod
from snf.live.lab import Lab, LabError


def _no_netns() -> str | None:
    """Why this machine cannot run the lab, or None."""
    if os.geteuid() != 0:
        return "not root: snf lab creates network namespaces and veth pairs"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` fails here ({exc})"
    return None


WHY_NOT = _no_netns()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

NAME = f"t{os.getpid() % 10000}"
ETH_P_ALL = 0x0003


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("snf-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNF_HOME", str(path))
        yield path


def _down_quietly(name: str) -> None:
    """A finalizer's teardown: whatever state the test left the lab in."""
    with contextlib.suppress(LabError):
        lab_mod.down(name)


@pytest.fixture(scope="module")
def lab(home: Path) -> Iterator[Lab]:
    try:
        yield lab_mod.up(NAME, blob_mib=2)
    finally:
        _down_quietly(NAME)


def _ip_json(*args: str) -> list[dict]:
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, check=True).stdout)


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _exists(ifname: str) -> bool:
    return Path(f"/sys/class/net/{ifname}").exists()


def test_namespaces_and_arms(lab: Lab) -> None:
    assert {lab.client_ns, lab.server_ns} <= _netns()
    assert (lab.client_arm, lab.server_arm) == (f"s{NAME}c", f"s{NAME}s")
    for arm in (lab.client_arm, lab.server_arm):
        (link,) = _ip_json("addr", "show", "dev", arm)
        assert "PROMISC" in link["flags"] and "UP" in link["flags"]
        assert link["addr_info"] == []  # no IPv4, and no IPv6 link-local either
        assert Path(f"/proc/sys/net/ipv6/conf/{arm}/disable_ipv6").read_text().strip() == "1"


def test_addresses_routes_and_static_neighbours(lab: Lab) -> None:
    want = {
        "client": (lab.client_mac, "10.10.1.2", "10.10.1.1", lab.server_mac),
        "server": (lab.server_mac, "198.51.100.10", "198.51.100.1", lab.client_mac),
    }
    for side, (mac, address, via, via_mac) in want.items():
        ns = lab.ns(side)
        (eth0,) = _ip_json("-n", ns, "addr", "show", "dev", "eth0")
        assert eth0["address"] == mac
        assert [(a["family"], a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [
            ("inet", address, 24)
        ]
        neigh = {n["dst"]: n for n in _ip_json("-n", ns, "neigh", "show", "dev", "eth0")}
        assert neigh[via]["lladdr"] == via_mac and "PERMANENT" in neigh[via]["state"]
        assert {r["dst"] for r in _ip_json("-n", ns, "route")} >= {
            "default" if side == "client" else "10.10.1.0/24"
        }
        v6 = lab.run(side, ["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"], text=True)
        assert v6.stdout.strip() == "1"
    assert (lab.client_ip, lab.server_ip) == ("10.10.1.2", "198.51.100.10")
    assert (lab.gateway_ip, lab.public_ip) == ("10.10.1.1", "198.51.100.1")


def test_offloads_are_off_in_the_namespaces(lab: Lab) -> None:
    for side in ("client", "server"):
        out = lab.run(side, ["ethtool", "-k", "eth0"], text=True).stdout
        features = dict(
            line.strip().split(": ", 1) for line in out.splitlines()[1:] if ": " in line
        )
        for feature in (
            "tx-checksumming",
            "tcp-segmentation-offload",
            "generic-segmentation-offload",
            "generic-receive-offload",
        ):
            assert features[feature].startswith("off"), (side, feature, features[feature])


FETCH = "import sys, urllib.request as u; sys.stdout.buffer.write(u.urlopen(sys.argv[1]).read())"


def _fetch(lab: Lab, side: str, url: str) -> bytes:
    done = lab.run(side, [sys.executable, "-c", FETCH, url], timeout=15)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_http_servers_serve_the_blob(lab: Lab) -> None:
    on_disk = hashlib.sha256(lab.blob.read_bytes()).hexdigest()
    assert on_disk == lab.blob_sha256 and lab.blob.stat().st_size == 2 << 20
    for port in (8080, 8081):
        body = _fetch(lab, "server", f"http://127.0.0.1:{port}/blob.bin")
        assert hashlib.sha256(body).hexdigest() == on_disk
    servers = {s["name"]: s for s in lab_mod.status(lab.name)["servers"]}
    assert servers["http-8080"]["listening"] and servers["http-8081"]["listening"]
    if shutil.which("iperf3"):
        assert servers["iperf3"]["listening"]


def test_up_again_with_the_same_name_refuses(lab: Lab) -> None:
    with pytest.raises(LabError, match="already recorded"):
        lab_mod.up(lab.name)


def test_names_that_exist_and_are_not_ours_are_refused_and_left_alone(home: Path) -> None:
    name = f"{NAME}f"
    foreign = f"snf-{name}-server"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        inode = os.stat(f"/var/run/netns/{foreign}").st_ino
        with pytest.raises(LabError, match=foreign):
            lab_mod.up(name)
        assert os.stat(f"/var/run/netns/{foreign}").st_ino == inode
        assert f"snf-{name}-client" not in _netns() and not _exists(f"s{name}c")
        assert not lab_mod.record_path(name).exists()
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=False)


def test_a_failed_up_removes_what_it_built(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{NAME}r"

    def broken(*args: object) -> None:
        raise OSError("no servers today")

    monkeypatch.setattr(lab_mod, "_serve", broken)
    try:
        with pytest.raises(OSError, match="no servers today"):
            lab_mod.up(name, blob_mib=0)
        assert not {f"snf-{name}-client", f"snf-{name}-server"} & _netns()
        assert not _exists(f"s{name}c") and not _exists(f"s{name}s")
        assert not lab_mod.record_path(name).exists()
    finally:
        _down_quietly(name)


def test_down_finishes_a_partial_lab_and_then_knows_it_no_more(home: Path) -> None:
    name = f"{NAME}p"
    try:
        partial = lab_mod.up(name, blob_mib=0, iperf=False)
        subprocess.run(["ip", "netns", "del", partial.server_ns], check=True)  # by hand
        said = lab_mod.down(name)
        assert f"namespace {partial.server_ns} was already gone" in said
        assert f"deleted namespace {partial.client_ns}" in said
        assert not {partial.client_ns, partial.server_ns} & _netns()
        assert not _exists(partial.client_arm) and not _exists(partial.server_arm)
        assert not any(Path(f"/proc/{s.pid}").exists() for s in partial.servers)
        assert not lab_mod.record_path(name).exists()
        with pytest.raises(LabError, match="no lab"):
            lab_mod.down(name)
    finally:
        _down_quietly(name)


def test_down_of_an_unknown_lab_is_an_error(home: Path) -> None:
    with pytest.raises(LabError, match="no lab 'nosuchlab'"):
        lab_mod.down("nosuchlab")
    with pytest.raises(LabError, match="1 to 13"):
        lab_mod.down("../etc")


class Forwarder(threading.Thread):
    """snf's place in the wire, in a dozen lines: every frame that arrives on one arm
    leaves by the other. Frames the host itself sends on an arm are counted apart."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(daemon=True)
        sa, sb = self._socket(a), self._socket(b)
        self.out = {sa: sb, sb: sa}
        self.forwarded = self.host_sent = 0
        self.stop = threading.Event()

    @staticmethod
    def _socket(ifname: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing...
        s.bind((ifname, ETH_P_ALL))  # ...until bound: then only this arm's frames
        return s

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select(list(self.out), [], [], 0.05)
            for s in ready:
                frame, addr = s.recvfrom(65535)
                if addr[2] == socket.PACKET_OUTGOING:
                    self.host_sent += 1  # not ours: a socket never sees its own sends
                    continue
                self.out[s].send(frame)
                self.forwarded += 1

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        for s in self.out:
            s.close()


def test_ping_and_http_through_a_forwarder_between_the_arms(lab: Lab) -> None:
    fwd = Forwarder(lab.client_arm, lab.server_arm)
    fwd.start()
    try:
        body = _fetch(lab, "client", f"http://{lab.server_ip}:8080/blob.bin")
        assert hashlib.sha256(body).hexdigest() == lab.blob_sha256  # checksums survived
        if shutil.which("ping"):
            ping = lab.run("client", ["ping", "-c", "2", "-i", "0.2", "-W", "2", lab.server_ip])
            assert ping.returncode == 0, ping.stdout
    finally:
        fwd.close()
    assert fwd.forwarded > 1000  # 2 MiB of TCP, both ways
    assert fwd.host_sent == 0
    if not shutil.which("ping"):
        pytest.skip("ping (iputils-ping) not installed: HTTP passed, ping not tried")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="snf")
    lab_command.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return lab_command.COMMANDS[args.command](args)


def test_cli_status_and_exec(lab: Lab, capfd: pytest.CaptureFixture[str]) -> None:
    assert _cli("lab", "status", "--name", lab.name) == 0
    assert lab.client_mac in capfd.readouterr().err
    assert _cli("lab", "exec", "--name", lab.name, "server", "--", "ip", "-br", "addr") == 0
    assert "198.51.100.10/24" in capfd.readouterr().out
    assert _cli("lab", "exec", "--name", lab.name, "client", "--", "sh", "-c", "exit 3") == 3
    with pytest.raises(LabError, match="no lab"):
        _cli("lab", "status", "--name", "nosuchlab")
