"""`snf lab`: two network namespaces wired to the host, where snf runs inline.

    client ns snf-NAME-client        host (snf)             server ns snf-NAME-server
    eth0 10.10.1.2/24 ==veth== sNAMEc  <-snf->  sNAMEs ==veth== eth0 198.51.100.10/24

The host ends (the arms) are up and promiscuous with no address, IPv6 off, ARP
replies off and forwarding off: the host sends nothing on them and never routes
between them; snf moves the frames. Static neighbours (no ARP ever) give
client->server frames the server's MAC and server->client frames the client's.
Every end has offloads off (`ethtool -K eth0 tx off`: a frame taken with
AF_PACKET from the peer of a sending veth has a partial checksum its receiver
drops). Each thing is recorded in $SNF_HOME/labs/NAME.json as soon as it exists,
and `down` removes exactly that, if still ours. docs/LIVE.md, "The lab".
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snf.errors import SnfError
from snf.kafka.settings import snf_home
from snf.live import lab_servers
from snf.live.lab_servers import Server

__all__ = [
    "CLIENT_IP",
    "CLIENT_NET",
    "GATEWAY_IP",
    "PUBLIC_IP",
    "SERVER_IP",
    "SERVER_NET",
    "Lab",
    "LabError",
    "down",
    "load",
    "names",
    "record_path",
    "status",
    "up",
]

CLIENT_IP = "10.10.1.2"  # the client, inside a NAT's private network
CLIENT_NET = "10.10.1.0/24"
GATEWAY_IP = "10.10.1.1"  # the client's gateway: no host has it, its MAC is the server's
SERVER_IP = "198.51.100.10"  # TEST-NET-2 (RFC 5737): never routed on the Internet
SERVER_NET = "198.51.100.0/24"
PUBLIC_IP = "198.51.100.1"  # a NAT's public address: its MAC is the client's
PREFIX = 24
# side -> (its address, the destination of its one route, the static neighbour it goes via)
ROUTES = {
    "client": (CLIENT_IP, "default", GATEWAY_IP),
    "server": (SERVER_IP, CLIENT_NET, PUBLIC_IP),
}
NETNS_DIR = Path("/var/run/netns")  # where `ip netns` keeps its namespaces
OFFLOADS = ("tx", "off", "tso", "off", "gso", "off", "gro", "off")
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"  # ip and ethtool live in sbin, off some PATHs
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}")  # s + 13 + c = IFNAMSIZ - 1

SIDES = ("client", "server")


class LabError(SnfError):
    """A lab that cannot be built, found or removed."""


def names(name: str) -> dict[str, str]:
    """The namespaces and host arms of lab `name`: snf-NAME-client/-server, sNAMEc/sNAMEs."""
    if not _NAME.fullmatch(name):
        raise LabError(
            f"lab name {name!r}: 1 to 13 letters, digits, - or _ (the host arms, "
            "s<name>c and s<name>s, must fit an interface name's 15 characters)"
        )
    return {
        "client_ns": f"snf-{name}-client",
        "server_ns": f"snf-{name}-server",
        "client_arm": f"s{name}c",
        "server_arm": f"s{name}s",
    }


def record_path(name: str) -> Path:
    return snf_home() / "labs" / f"{name}.json"


def _state_dir(name: str) -> Path:
    """The served directory (www/) and the servers' logs."""
    return snf_home() / "labs" / name


@dataclass(frozen=True)
class Lab:
    """A lab that is up, as its record describes it."""

    name: str
    client_ns: str
    server_ns: str
    client_arm: str  # the host end of the client's veth: snf captures/sends here
    server_arm: str
    client_mac: str  # the client namespace's eth0
    server_mac: str
    state_dir: Path
    blob_sha256: str
    servers: tuple[Server, ...]
    client_ip: str = CLIENT_IP
    server_ip: str = SERVER_IP
    gateway_ip: str = GATEWAY_IP
    public_ip: str = PUBLIC_IP

    @property
    def blob(self) -> Path:
        """The file the HTTP servers serve (their directory is its parent)."""
        return self.state_dir / "www" / lab_servers.BLOB_NAME

    def ns(self, side: str) -> str:
        if side not in SIDES:
            raise LabError(f"side {side!r}: client or server")
        return str(getattr(self, f"{side}_ns"))

    def exec(self, side: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside the client or server namespace."""
        return subprocess.Popen(_netns_exec(self.ns(side)) + list(argv), **popen_kwargs)

    def run(
        self, side: str, argv: list[str], timeout: float = 10.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside a namespace to completion; output captured unless redirected."""
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs["capture_output"] = True
        cmd = _netns_exec(self.ns(side)) + list(argv)
        return subprocess.run(cmd, timeout=timeout, check=False, **kwargs)

    def down(self) -> list[str]:
        return down(self.name)


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")
    if not found:
        raise LabError(f"{name} not found: {hint}")
    return found


def _run(cmd: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode:
        raise LabError(f"{' '.join(cmd)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _ip(*args: str, stdin: str | None = None) -> str:
    return _run([_tool("ip", "install iproute2 (make live-tools)"), *args], stdin)


def _netns_exec(ns: str) -> list[str]:
    return [_tool("ip", "install iproute2 (make live-tools)"), "netns", "exec", ns]


def _save(record: dict[str, Any]) -> None:
    """Atomically, after each thing created: a crash leaves a record `down` can undo."""
    path = record_path(record["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _read(name: str) -> dict[str, Any]:
    path = record_path(name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab {name!r}: no record at {path}") from None
    except ValueError as exc:
        raise LabError(f"{path}: not a lab record ({exc})") from None


def _ns_inode(ns: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / ns).st_ino  # the namespace's own id while mounted
    except OSError:
        return None


def _mac(ifname: str, attr: str = "address") -> str | None:
    """A host interface's MAC (or another sysfs attribute); None if it does not exist."""
    try:
        return Path(f"/sys/class/net/{ifname}/{attr}").read_text().strip()
    except OSError:
        return None


def _preflight(name: str, plan: dict[str, str]) -> str:
    """Everything checked before anything is created; returns ethtool's path."""
    if os.geteuid() != 0:
        raise LabError("snf lab creates network namespaces and veth pairs: run it as root")
    _tool("ip", "install iproute2 (apt-get install iproute2, or make live-tools)")
    ethtool = _tool(
        "ethtool",
        "snf lab turns off its veths' checksum offload with it (a frame taken with AF_PACKET "
        "has a partial checksum its receiver drops): apt-get install ethtool",
    )
    if record_path(name).exists():
        raise LabError(
            f"lab {name!r} is already recorded ({record_path(name)}): "
            f"`snf lab status --name {name}`, or `snf lab down --name {name}` first"
        )
    clash = [ns for ns in (plan["client_ns"], plan["server_ns"]) if _ns_inode(ns) is not None]
    clash += [arm for arm in (plan["client_arm"], plan["server_arm"]) if _mac(arm) is not None]
    if clash:
        raise LabError(
            f"{', '.join(clash)} already exist(s) and no snf lab record lists them; "
            "snf lab will not touch them: remove them yourself or pick another --name"
        )
    return ethtool


def up(name: str = "lab", blob_mib: int = 16, iperf: bool = True) -> Lab:
    """Build lab `name` and start its servers; on any failure undo what was built."""
    if not 0 <= blob_mib <= 4096:
        raise LabError(f"blob size {blob_mib} MiB: 0 to 4096")
    plan = names(name)
    ethtool = _preflight(name, plan)
    state = _state_dir(name)
    record: dict[str, Any] = {
        "name": name,
        "complete": False,
        **plan,
        "namespaces": {},  # name -> inode, each written as soon as it exists
        "links": {},  # host arm -> its MAC
        "addresses": {"client": f"{CLIENT_IP}/{PREFIX}", "server": f"{SERVER_IP}/{PREFIX}"},
        "gateway_ip": GATEWAY_IP,
        "public_ip": PUBLIC_IP,
        "state_dir": str(state),
        "servers": [],
    }
    _save(record)
    try:
        _build(record, ethtool)
        _serve(record, blob_mib, iperf)
        record["complete"] = True
        _save(record)
    except BaseException as exc:
        try:
            _teardown(record)
        except Exception as undo:  # the record stays: `snf lab down` can finish the job
            exc.add_note(f"undoing it failed too ({undo}): `snf lab down --name {name}`")
        raise
    return load(name)


def _build(record: dict[str, Any], ethtool: str) -> None:
    for side in SIDES:
        ns, arm = record[f"{side}_ns"], record[f"{side}_arm"]
        _ip("netns", "add", ns)
        record["namespaces"][ns] = _ns_inode(ns)
        _save(record)
        # IPv6 off by default before eth0 exists, so eth0 never gets a link-local address.
        _run([*_netns_exec(ns), "sh", "-c", _ipv6_off("all", "default")])
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", arm, "type", "veth", "peer", "name", "eth0", "netns", ns)
        record["links"][arm] = _mac(arm)
        _save(record)
        _quiet_arm(arm)
        _ip("link", "set", arm, "promisc", "on", "up")
        _run([ethtool, "-K", arm, *OFFLOADS])
        _run([*_netns_exec(ns), ethtool, "-K", "eth0", *OFFLOADS])
        _run([*_netns_exec(ns), "sh", "-c", _ipv6_off("eth0")])
    for side in SIDES:
        ns = record[f"{side}_ns"]
        record[f"{side}_mac"] = json.loads(_ip("-n", ns, "-j", "link", "show", "eth0"))[0][
            "address"
        ]
    _save(record)
    for side, peer in (("client", "server"), ("server", "client")):
        _ip("-n", record[f"{side}_ns"], "-batch", "-", stdin=_eth0(side, record[f"{peer}_mac"]))


def _eth0(side: str, peer_mac: str) -> str:
    """`ip -batch` lines for eth0: address, route, and its gateway's MAC (never an ARP)."""
    address, dest, via = ROUTES[side]
    return (
        f"addr add {address}/{PREFIX} dev eth0\nlink set eth0 up\n"
        f"route add {dest} via {via} dev eth0\n"
        f"neigh replace {via} lladdr {peer_mac} dev eth0 nud permanent\n"
    )


def _ipv6_off(*ifaces: str) -> str:
    """sh setting disable_ipv6=1 where IPv6 exists (ipv6.disable=1 at boot removes it)."""
    files = " ".join(f"/proc/sys/net/ipv6/conf/{i}/disable_ipv6" for i in ifaces)
    return f'for f in {files}; do [ ! -e "$f" ] || echo 1 > "$f"; done'


def _quiet_arm(arm: str) -> None:
    """The host sends nothing on an arm: no IPv6 (so no link-local, DAD or RS), no ARP
    replies for its own addresses, and no forwarding of what arrives there."""
    for path, value in (
        (f"/proc/sys/net/ipv6/conf/{arm}/disable_ipv6", "1"),
        (f"/proc/sys/net/ipv4/conf/{arm}/arp_ignore", "8"),
        (f"/proc/sys/net/ipv4/conf/{arm}/forwarding", "0"),
    ):
        if Path(path).exists():
            Path(path).write_text(value)


def _serve(record: dict[str, Any], blob_mib: int, iperf: bool) -> None:
    iperf3 = shutil.which("iperf3") if iperf else None
    record["iperf3"] = iperf3 or ("not installed" if iperf else "not wanted")

    def started(server: Server) -> None:
        record["servers"].append(server.to_json())
        _save(record)

    netns_exec = _netns_exec(record["server_ns"])
    state = _state_dir(record["name"])
    record["blob_sha256"] = lab_servers.write_blob(state / "www", blob_mib)
    if late := lab_servers.serve(netns_exec, state, iperf3, started):
        logs = "; ".join(f"{s.name}: see {s.log}" for s in late)
        raise LabError(f"servers not listening after 10 s: {logs}")


def _teardown(record: dict[str, Any]) -> list[str]:
    """Remove what the record lists and is still ours; says what it did."""
    said = [lab_servers.stop(Server.from_json(s)) for s in record.get("servers", [])]
    for kind, made, now_of, delete in (
        ("arm", record.get("links", {}), _mac, _delete_arm),  # arm -> MAC
        ("namespace", record.get("namespaces", {}), _ns_inode, _delete_ns),  # ns -> inode
    ):
        for thing, ident in made.items():
            now = now_of(thing)
            if now is None:
                said.append(f"{kind} {thing} was already gone")
            elif now != ident:  # the same name on something else: not ours to remove
                said.append(f"left {kind} {thing} alone: not the one this lab created")
            else:
                said.append(delete(thing))
    shutil.rmtree(_state_dir(record["name"]), ignore_errors=True)  # never a recorded path
    record_path(record["name"]).unlink(missing_ok=True)
    return said


def _delete_arm(arm: str) -> str:
    try:
        _ip("link", "del", arm)  # removes its peer, eth0 in the namespace, too
    except LabError:
        if _mac(arm) is not None:
            raise
        return f"arm {arm} went with its namespace"  # one deleted by hand, dying meanwhile
    return f"deleted arm {arm}"


def _delete_ns(ns: str) -> str:
    _ip("netns", "del", ns)
    return f"deleted namespace {ns}"


def down(name: str = "lab") -> list[str]:
    """Remove lab `name` (complete or not) as its record lists it; says what it did."""
    names(name)
    return _teardown(_read(name))


def load(name: str = "lab") -> Lab:
    """The lab `name` as recorded; LabError if there is none or it is only partly built."""
    names(name)
    rec = _read(name)
    if not rec.get("complete"):
        raise LabError(f"lab {name!r} is only partly built: `snf lab down --name {name}`")
    fields = {f.name for f in dataclasses.fields(Lab)} & rec.keys()
    servers = tuple(Server.from_json(s) for s in rec["servers"])
    return Lab(
        **{**{f: rec[f] for f in fields}, "state_dir": Path(rec["state_dir"]), "servers": servers}
    )


def status(name: str = "lab") -> dict[str, Any]:
    """The record, with what is live now: namespaces, arms (MAC, up) and servers."""
    names(name)
    rec = _read(name)
    rec["namespaces_now"] = {ns: _ns_inode(ns) == ino for ns, ino in rec["namespaces"].items()}
    rec["arms_now"] = {
        arm: {"ours": _mac(arm) == mac, "up": _mac(arm, "operstate") or "absent"}
        for arm, mac in rec["links"].items()
    }
    for s in rec["servers"]:
        server = Server.from_json(s)
        s["alive"], s["listening"] = lab_servers.alive(server), lab_servers.listening(server)
    return rec
