"""`snf lab up|down|status|exec`: two network namespaces wired to the host, for live tests.

snf.live.lab builds and records the lab; this module parses and prints.
docs/LIVE.md, "The lab".
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from snf.cli.common import console
from snf.errors import SnfError

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab",
        help="a client and a server namespace wired to this host, for snf inline (root)",
        description="Two network namespaces, each joined to the host by a veth pair whose "
        "host end (an arm) has no address: snf carries the frames between the arms. "
        "See docs/LIVE.md.",
    )
    lsub = lab.add_subparsers(dest="lab_command", required=True)
    up = lsub.add_parser("up", help="build the lab and start its HTTP and iperf3 servers")
    _add_name(up)
    up.add_argument(
        "--blob-mib",
        type=int,
        default=16,
        metavar="N",
        help="size of blob.bin, the file the HTTP servers serve (default: 16)",
    )
    _add_name(lsub.add_parser("down", help="remove what `up` created, and only that"))
    _add_name(lsub.add_parser("status", help="namespaces, arms, addresses, MACs, servers"))
    ex = lsub.add_parser(
        "exec",
        help="run a command in the client or server namespace",
        usage="snf lab exec [--name NAME] {client,server} -- CMD...",
    )
    _add_name(ex)
    ex.add_argument("side", choices=("client", "server"))
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")


def _add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="lab", help="the lab's name (default: lab)")


def _cmd_lab(args: argparse.Namespace) -> int:
    from snf.live import lab

    if args.lab_command == "up":
        built = lab.up(args.name, blob_mib=args.blob_mib)
        _print_status(lab.status(built.name))
        console.print(f"down with: [bold]snf lab down --name {built.name}[/]")
        return 0
    if args.lab_command == "down":
        for line in lab.down(args.name):
            console.print(line)
        return 0
    if args.lab_command == "status":
        _print_status(lab.status(args.name))
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SnfError("snf lab exec: no command (snf lab exec client -- ping 198.51.100.10)")
    try:
        return lab.load(args.name).exec(args.side, cmd).wait()
    except KeyboardInterrupt:  # the command had the Ctrl-C too (same process group)
        return 130


def _print_status(st: dict[str, Any]) -> None:
    from snf.live.lab import CLIENT_NET

    state = "[green]up[/]" if st.get("complete") else "[red]partly built[/]"
    table = Table(title=f"lab {st['name']}: {state}", title_justify="left")
    table.add_column("namespace", overflow="fold")
    table.add_column("host arm", overflow="fold")
    for col in ("eth0 address", "eth0 MAC"):
        table.add_column(col, no_wrap=True)  # whole, to copy into a pipeline or a filter
    for side in ("client", "server"):
        ns, arm = st[f"{side}_ns"], st[f"{side}_arm"]
        arm_now = st["arms_now"].get(arm, {"ours": False, "up": "absent"})
        table.add_row(
            ns if st["namespaces_now"].get(ns) else f"[red]{ns} missing[/]",
            f"{arm} {arm_now['up']}" if arm_now["ours"] else f"[red]{arm} missing[/]",
            st["addresses"][side],
            st.get(f"{side}_mac", "?"),
        )
    console.print(table)
    console.print(
        f"static neighbours: client {st['gateway_ip']} -> server MAC, "
        f"server {st['public_ip']} -> client MAC (route to {CLIENT_NET} via it)"
    )
    servers = Table(title="servers (in the server namespace)", title_justify="left")
    for col in ("server", "port", "pid", "alive", "listening"):
        servers.add_column(col)
    for s in st["servers"]:
        alive, listening = _yes(s["alive"]), _yes(s["listening"])
        servers.add_row(s["name"], str(s["port"]), str(s["pid"]), alive, listening)
    console.print(servers)
    console.print(f"served files and server logs: {st['state_dir']}")
    if st.get("iperf3", "").startswith("not"):
        console.print(f"iperf3: {st['iperf3']}")
    if st.get("blob_sha256"):
        console.print(f"blob.bin sha256 {st['blob_sha256']}")


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


COMMANDS = {"lab": _cmd_lab}
