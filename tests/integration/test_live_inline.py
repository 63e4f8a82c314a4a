"""snf inline between real clients and servers, on the real broker (docs/LIVE.md).

A lab (snf.live.lab: a client and a server network namespace, an arm each
to this namespace) and a deployed firewall -> nat chain whose `egress:
inline` sends each frame out of the arm it did not come in by; `snf
capture` and `snf sink` run as the user runs them. Then, with real tools:

- ping and curl reach the server through the chain; the server sees the
  NAT's public address, never the client's; a port the firewall does not
  allow stays closed;
- a rate-limited download runs while `snf chaos NAME --kill fw --kill nat`
  kills both workers in turn: it completes, its bytes equal the file, and
  the server side saw one NAT binding for it throughout;
- the counters add up: every captured packet is at egress or dropped with
  a reason (`distinct` at the sink), everything at egress was sent, and
  the kernel's drops are reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from snf.cli.main import main
from snf.packet.capture_file import read_capture

pytestmark = pytest.mark.integration

NEEDS = ("ping", "curl", "ethtool")
if os.geteuid() != 0 or shutil.which("ip") is None:
    pytest.skip("the lab needs root and iproute2 (network namespaces)", allow_module_level=True)
if missing := [t for t in NEEDS if shutil.which(t) is None]:
    pytest.skip(
        f"{', '.join(missing)} not installed (make setup installs them)", allow_module_level=True
    )

PIPELINE = """\
name: {name}
partitions: 2
ship: whole
functions:
  - name: fw
    function: firewall
    config:
      default: drop
      non_ip: allow
      rules:
        - {{action: allow, proto: tcp, src: 10.10.1.0/24, dport: 8080}}
        - {{action: allow, proto: icmp, src: 10.10.1.0/24}}
        - {{action: allow, dst: {public}}}
  - name: nat
    function: nat
    config:
      inside: [10.10.1.0/24]
      public_ips: [{public}]
egress:
  inline: [{client_arm}, {server_arm}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    from snf.live import lab as labs

    name = f"i{os.getpid() % 1000}"
    made = labs.up(name, blob_mib=4)
    try:
        yield made
    finally:
        labs.down(name)


def _curl(lab, port: int, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    url = f"http://{lab.server_ip}:{port}/blob.bin"
    argv = ["curl", "-sS", "-o", "-", "--max-time", str(timeout), *extra, url]
    return subprocess.run(
        ["ip", "netns", "exec", lab.client_ns, *argv], capture_output=True, timeout=timeout + 30
    )


def _bindings(tap: Path, server_ip: str, port: int) -> set[tuple[str, int]]:
    """(source address, source port) of every TCP packet the sink sent toward the server."""
    seen, server = set(), socket.inet_aton(server_ip)
    for p in read_capture(tap):
        eth = dpkt.ethernet.Ethernet(p.data)
        ip = eth.data
        tcp = ip.data if isinstance(ip, dpkt.ip.IP) else None
        if isinstance(tcp, dpkt.tcp.TCP) and ip.dst == server and tcp.dport == port:
            seen.add((socket.inet_ntoa(ip.src), tcp.sport))
    return seen


def test_real_clients_through_a_deployed_chain_survive_failover(
    lab, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snf.harness.inline_rig import inline_rig

    monkeypatch.setenv("SNF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SNF_BROKERS", kafka_bootstrap)
    name = f"live-t{os.getpid() % 100000}"
    text = PIPELINE.format(
        name=name, public=lab.public_ip, client_arm=lab.client_arm, server_arm=lab.server_arm
    )
    blob = lab.blob_sha256
    with inline_rig(lab, text, tmp_path / "rig") as rig:
        rig.wait_reachable(120)
        got = _curl(lab, 8080)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(got.stdout).hexdigest() == blob
        assert _curl(lab, 8081, timeout=3).returncode != 0  # the firewall's default: drop

        # A download at 200 KiB/s (~20 s) while fw, then nat, are killed and replaced.
        download = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, "curl", "-sS", "--limit-rate", "200K",
             "--max-time", "170", "-o", str(tmp_path / "download.bin"),
             f"http://{lab.server_ip}:8080/blob.bin"],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(2)
        chaos_json = tmp_path / "chaos.json"
        kills = ["--kill", "fw", "--kill", "nat", "--seed", "7", "--json", str(chaos_json)]
        assert main(["chaos", name, *kills]) == 0
        assert download.poll() is None, "the download ended before the kills: nothing was tested"
        _, err = download.communicate(timeout=200)
        assert download.returncode == 0, err
        assert hashlib.sha256((tmp_path / "download.bin").read_bytes()).hexdigest() == blob
        done = json.loads(chaos_json.read_text())["kills"]
        assert [k["function"] for k in done] == ["fw", "nat"] and all(k["back_after"] for k in done)

    # The server's own log: two GETs, both from the NAT's public address.
    clients = [
        line.split()[0]
        for line in (lab.state_dir / "http-8080.log").read_text().splitlines()
        if "GET /blob.bin" in line
    ]
    assert clients == [lab.public_ip] * 2, clients

    # Two connections to 8080 (the first fetch, the download), one binding each,
    # all from the NAT's public address: the kills never re-mapped a connection.
    bindings = _bindings(rig.tap, lab.server_ip, 8080)
    assert {addr for addr, _ in bindings} == {lab.public_ip}
    assert len(bindings) == 2, bindings

    captured, out = rig.capture_summary, rig.sink_summary
    taken = sum(i["captured"] for i in captured["interfaces"].values())
    assert taken == captured["packets"] > 1000
    assert all("kernel_dropped" in i for i in captured["interfaces"].values())
    assert out["distinct"] == taken  # every packet at egress or dropped with a reason
    sent = out["transmit"]
    assert sum(sent[arm]["sent"] for arm in (lab.client_arm, lab.server_arm)) == out["egress"]
    assert sent["unrouted"] == 0 and sent["latency"]["packets"] == out["egress"]
