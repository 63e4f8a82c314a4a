"""NAT config model and its compilation (a helper of snf.functions.nat).

Everything is validated once, when the pipeline is loaded; errors name the
field (pydantic adds the path) and say what was expected. `compile_config`
turns the validated model into plain ints and bytes for the per-packet path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from snf.core.cidr import OneOrMany, parse_cidrs
from snf.core.contract import BoundedStateConfig
from snf.core.limits import Seconds

__all__ = [
    "FILTERING",
    "CompiledNat",
    "NatConfig",
    "NatTimeouts",
    "PortForward",
    "compile_config",
    "parse_endpoint",
    "parse_port_range",
]

FORWARD_PROTOS = {"tcp": 6, "udp": 17}
FILTERING = ("endpoint-independent", "address-dependent", "address-and-port-dependent")
_NS = 1_000_000_000
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _ipv4(text: Any, what: str) -> ipaddress.IPv4Address:
    if not isinstance(text, str):
        raise ValueError(f"expected {what} as a string such as 198.51.100.1, got {text!r}")
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ValueError(f"expected {what} (IPv4, e.g. 198.51.100.1), got {text!r}") from None


def parse_endpoint(text: Any) -> tuple[bytes, int]:
    """'198.51.100.1:8080' -> (4 address bytes, port 1..65535). Raises ValueError."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise ValueError(f"expected 'IPv4:port' such as 198.51.100.1:8080, got {text!r}")
    host, _, port_text = text.strip().partition(":")
    addr = _ipv4(host, "an IPv4 address before ':'")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected a port 1..65535 after ':', got {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port 1..65535 after ':', got {port} in {text!r}")
    return addr.packed, port


def parse_port_range(value: Any) -> tuple[int, int]:
    """A port or 'lo-hi' -> (lo, hi) with 1 <= lo <= hi <= 65535. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a port range 'lo-hi' such as '1024-65535', got {value!r}")
    lo_text, dash, hi_text = str(value).strip().partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
    except ValueError:
        raise ValueError(
            f"expected a port range 'lo-hi' such as '1024-65535', got {value!r}"
        ) from None
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(
            f"expected a port range 'lo-hi' with 1 <= lo <= hi <= 65535, got {value!r}"
        )
    return lo, hi


class PortForward(BaseModel, extra="forbid"):
    """A static binding: the public endpoint always leads to the inside endpoint."""

    proto: Literal["tcp", "udp"] = Field(description="tcp or udp.")
    public: str = Field(
        description="'IP:port' reachable from outside; IP must be one of public_ips. Its "
        "port is never handed out to dynamic bindings."
    )
    inside: str = Field(description="'IP:port' of the inside server; IP must lie in `inside`.")

    @field_validator("proto", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("public", "inside")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parse_endpoint(value)
        return value.strip()


class NatTimeouts(BaseModel, extra="forbid"):
    """Idle lifetimes of dynamic bindings in seconds of packet time (RFC 4787, 5382, 5508)."""

    tcp: Seconds = Field(
        default=7440, description="TCP binding once packets were seen both ways (RFC 5382)."
    )
    tcp_transitory: Seconds = Field(
        default=240,
        description="TCP binding before traffic was seen both ways, after FIN both ways, or "
        "after a RST.",
    )
    udp: Seconds = Field(default=300, description="UDP binding (RFC 4787 REQ-5).")
    icmp: Seconds = Field(default=60, description="ICMP echo (query) binding (RFC 5508).")


class NatConfig(BoundedStateConfig):
    """Config of the NAT44 function. Fields are validated in this order (max_entries
    and sweep_interval, from BoundedStateConfig, first)."""

    inside: OneOrMany = Field(
        description="The inside networks as IPv4 CIDRs; a bare address is a /32.", min_length=1
    )
    public_ips: OneOrMany = Field(
        description="Public IPv4 addresses of the NAT, none inside `inside`.", min_length=1
    )
    ports: int | str = Field(
        default="1024-65535",
        description="Public port (and ICMP identifier) range 'lo-hi' for dynamic bindings.",
    )
    port_forwards: list[PortForward] = Field(
        default_factory=list, description="Static bindings {proto, public, inside}."
    )
    timeouts: NatTimeouts = Field(
        default_factory=NatTimeouts, description="Binding idle timeouts in seconds."
    )
    filtering: Literal[
        "endpoint-independent", "address-dependent", "address-and-port-dependent"
    ] = Field(
        default="address-and-port-dependent",
        description="Which inbound packets a dynamic binding admits (RFC 4787 section 5).",
    )

    @field_validator("inside", mode="before")
    @classmethod
    def _check_inside(cls, value: Any) -> Any:
        for version, _, _ in parse_cidrs(value):
            if version != 4:
                raise ValueError(
                    f"expected IPv4 CIDRs (the NAT is NAT44), got {value!r}, which has an IPv6 one"
                )
        return [value] if isinstance(value, str) else value

    @field_validator("public_ips", mode="before")
    @classmethod
    def _one_public(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("public_ips")
    @classmethod
    def _check_public(cls, value: list[str], info: ValidationInfo) -> list[str]:
        seen: set[ipaddress.IPv4Address] = set()
        inside = _nets(info.data.get("inside"))
        out = []
        for text in value:
            addr = _ipv4(text, "a public IPv4 address")
            if addr.is_unspecified or addr.is_multicast or addr == _BROADCAST:
                raise ValueError(f"expected a unicast IPv4 address, got {text!r}")
            if addr in seen:
                raise ValueError(f"expected distinct addresses, got {text!r} twice")
            if any(addr in net for net in inside):
                raise ValueError(f"public IP {text!r} lies in the inside networks")
            seen.add(addr)
            out.append(str(addr))
        return out

    @field_validator("ports", mode="before")  # before: a bool is not taken for a port
    @classmethod
    def _check_ports(cls, value: Any) -> Any:
        parse_port_range(value)
        return value

    @field_validator("port_forwards")
    @classmethod
    def _check_forwards(cls, value: list[PortForward], info: ValidationInfo) -> list[PortForward]:
        public = {ipaddress.IPv4Address(a).packed for a in info.data.get("public_ips") or ()}
        inside = _nets(info.data.get("inside"))
        publics: dict[tuple[str, bytes, int], int] = {}
        insides: dict[tuple[str, bytes, int], int] = {}
        for i, fwd in enumerate(value):
            where = f"port_forwards[{i}] ({fwd.proto} {fwd.public} -> {fwd.inside})"
            pub = parse_endpoint(fwd.public)
            ins = parse_endpoint(fwd.inside)
            if public and pub[0] not in public:
                raise ValueError(f"{where}: public IP is not one of public_ips")
            if inside and not any(ipaddress.IPv4Address(ins[0]) in net for net in inside):
                raise ValueError(f"{where}: inside IP does not lie in the inside networks")
            for seen, key, what in (
                (publics, (fwd.proto, *pub), "public"),
                (insides, (fwd.proto, *ins), "inside"),
            ):
                if key in seen:
                    raise ValueError(
                        f"{where}: same {fwd.proto} {what} endpoint as port_forwards[{seen[key]}]"
                    )
                seen[key] = i
        return value


def _nets(value: Any) -> list[ipaddress.IPv4Network]:
    """The inside networks of an already validated `inside` (empty when it failed)."""
    return [ipaddress.IPv4Network(text.strip()) for text in value or ()]


@dataclass(frozen=True, slots=True)
class CompiledNat:
    """The config as plain data for the per-packet path."""

    inside: tuple[tuple[int, int], ...]  # (network, mask) as ints
    public_ips: tuple[bytes, ...]
    lo: int
    hi: int
    fwd_public: dict[tuple[int, bytes, int], tuple[bytes, int]]  # public ep -> inside ep
    fwd_inside: dict[tuple[int, bytes, int], tuple[bytes, int]]  # inside ep -> public ep
    filtering: int  # index into FILTERING
    tcp_ns: int
    transitory_ns: int
    udp_ns: int
    icmp_ns: int


def compile_config(config: NatConfig) -> CompiledNat:
    fwd_public: dict[tuple[int, bytes, int], tuple[bytes, int]] = {}
    fwd_inside: dict[tuple[int, bytes, int], tuple[bytes, int]] = {}
    for fwd in config.port_forwards:
        proto = FORWARD_PROTOS[fwd.proto]
        pub, ins = parse_endpoint(fwd.public), parse_endpoint(fwd.inside)
        fwd_public[(proto, *pub)] = ins
        fwd_inside[(proto, *ins)] = pub
    lo, hi = parse_port_range(config.ports)
    t = config.timeouts
    return CompiledNat(
        inside=tuple((net, mask) for _, net, mask in parse_cidrs(config.inside)),
        public_ips=tuple(ipaddress.IPv4Address(a).packed for a in config.public_ips),
        lo=lo,
        hi=hi,
        fwd_public=fwd_public,
        fwd_inside=fwd_inside,
        filtering=FILTERING.index(config.filtering),
        tcp_ns=round(t.tcp * _NS),
        transitory_ns=round(t.tcp_transitory * _NS),
        udp_ns=round(t.udp * _NS),
        icmp_ns=round(t.icmp * _NS),
    )
