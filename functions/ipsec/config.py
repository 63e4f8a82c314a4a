"""ipsec config model: security associations, selectors, the cleartext policy.

Everything is validated when the pipeline is loaded; errors name the field
(pydantic adds the path) and say what was expected. Keys are read then too,
from a file or an environment variable, and kept in a private attribute: no
error, repr or dump of the config ever shows one.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from snf.core.cidr import Net, parse_cidrs
from snf.core.contract import FunctionConfig
from snf.core.limits import read_text_file

from .esp import CIPHERS, KEY_BYTES

__all__ = ["IpsecConfig", "Lifetime", "Policy", "SaConfig", "Selector"]

PROTOS = {"any": -1, "icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
MAX_KEY_FILE = 4096
MAX_WINDOW = 1 << 16  # bits; a window is one table value, written once per batch
_ANY_PORTS = (0, 65535)


def _ports(value: Any) -> tuple[int, int]:
    """'any', 80 or '1024-65535' -> an inclusive range."""
    if value == "any":
        return _ANY_PORTS
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return (value, value)
    if isinstance(value, str) and value.count("-") == 1:
        lo, _, hi = value.partition("-")
        if lo.strip().isdigit() and hi.strip().isdigit() and int(lo) <= int(hi) <= 65535:
            return (int(lo), int(hi))
    raise ValueError(
        f"expected 'any', a port 0..65535 or a range such as '1024-65535', got {value!r}"
    )


class Selector(FunctionConfig):
    """Traffic selector (RFC 4301 §4.4.1): inner addresses, protocol and ports, as seen
    from this gateway: `local` is our side (source of outbound traffic)."""

    local: str | list[str] = Field(description="Our side's prefix(es), e.g. 10.1.0.0/16.")
    remote: str | list[str] = Field(description="The peer side's prefix(es), e.g. 10.2.0.0/16.")
    proto: str | int = Field(
        default="any",
        description=f"IP protocol: {', '.join(PROTOS)} or a number 0..255.",
    )
    local_ports: str | int = Field(default="any", description="'any', a port or 'lo-hi'.")
    remote_ports: str | int = Field(default="any", description="'any', a port or 'lo-hi'.")

    @field_validator("local", "remote")
    @classmethod
    def _check_prefixes(cls, value: Any) -> Any:
        parse_cidrs(value)
        return value

    @field_validator("proto")
    @classmethod
    def _check_proto(cls, value: Any) -> Any:
        if isinstance(value, str) and value in PROTOS:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
            return value
        raise ValueError(f"expected one of {', '.join(PROTOS)} or 0..255, got {value!r}")

    @field_validator("local_ports", "remote_ports")
    @classmethod
    def _check_ports(cls, value: Any) -> Any:
        _ports(value)
        return value

    def compiled(
        self,
    ) -> tuple[tuple[Net, ...], tuple[Net, ...], int, tuple[int, int], tuple[int, int]]:
        """(local nets, remote nets, proto (-1: any), local ports, remote ports)."""
        proto = PROTOS[self.proto] if isinstance(self.proto, str) else self.proto
        return (
            parse_cidrs(self.local),
            parse_cidrs(self.remote),
            proto,
            _ports(self.local_ports),
            _ports(self.remote_ports),
        )


class Policy(Selector):
    """A cleartext policy entry (RFC 4301's SPD BYPASS / DISCARD), matched in either
    orientation: local -> remote and remote -> local."""

    action: Literal["bypass", "discard"] = Field(description="bypass (pass) or discard (drop).")


class Lifetime(FunctionConfig):
    """SA lifetime limits (RFC 4301 §4.4.2.1). Soft: counted and reported once.
    Hard: packets beyond it are dropped (`seq_exhausted`)."""

    soft_packets: int | None = Field(default=None, ge=1, strict=True)
    hard_packets: int | None = Field(default=None, ge=1, strict=True)
    soft_bytes: int | None = Field(default=None, ge=1, strict=True)
    hard_bytes: int | None = Field(default=None, ge=1, strict=True)


class SaConfig(FunctionConfig):
    """One manually keyed security association (unidirectional, RFC 4301 §4.1)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Name in records.")
    direction: Literal["in", "out"] = Field(description="in: we decrypt; out: we encrypt.")
    mode: Literal["tunnel", "transport"] = Field(
        default="tunnel",
        description="tunnel: ESP carries whole inner packets between local and peer; "
        "transport (RFC 4303 §3.1.1): local and peer are the two hosts themselves, ESP goes "
        "between their packets' IP header and payload, and every selector's local and remote "
        "must be exactly those two addresses.",
    )
    spi: int = Field(ge=256, le=0xFFFFFFFF, strict=True, description="SPI, 256..2^32-1.")
    local: str = Field(
        description="Our tunnel address (outer dst of in, outer src of out); in transport "
        "mode our host's own address."
    )
    peer: str = Field(
        description="The peer gateway's tunnel address; in transport mode the peer host's."
    )
    selectors: list[Selector] = Field(min_length=1, description="Inner traffic of this SA.")
    cipher: Literal[CIPHERS] = Field(description=f"One of {', '.join(CIPHERS)}.")  # type: ignore[valid-type]
    key_file: str | None = Field(
        default=None,
        description="File holding the key material as hex (AES key, then the 4-byte GCM salt "
        "or the 32-byte HMAC key); relative to the pipeline file.",
    )
    key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the key material as hex.",
    )
    esn: bool = Field(default=False, description="64-bit extended sequence numbers (RFC 4303).")
    replay_window: int = Field(
        default=1024,
        ge=32,
        le=MAX_WINDOW,
        strict=True,
        description="Anti-replay window in packets (in SAs), a multiple of 32.",
    )
    lifetime: Lifetime = Field(default_factory=Lifetime)
    _key: bytes = PrivateAttr(default=b"")

    @field_validator("local", "peer")
    @classmethod
    def _check_address(cls, value: Any) -> Any:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"expected an IPv4 or IPv6 address, got {value!r}") from None
        return value

    @field_validator("replay_window")
    @classmethod
    def _check_window(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"expected a multiple of 32, got {value}")
        return value

    @model_validator(mode="after")
    def _load_key(self, info: ValidationInfo) -> SaConfig:
        if ipaddress.ip_address(self.local).version != ipaddress.ip_address(self.peer).version:
            raise ValueError("local and peer must both be IPv4 or both IPv6")
        if (self.key_file is None) == (self.key_env is None):
            raise ValueError("give exactly one of key_file (a path) or key_env (a variable name)")
        if self.key_file is not None:
            path = Path(self.key_file)
            base = (info.context or {}).get("base_dir")
            if base is not None and not path.is_absolute():
                path = Path(base) / path
            text, where = read_text_file(path, "key file", MAX_KEY_FILE), f"key_file {path}"
        else:
            text, where = os.environ.get(self.key_env or ""), f"key_env ${self.key_env}"
            if text is None:
                raise ValueError(f"{where} is not set")
        self._key = _parse_key(text, where, KEY_BYTES[self.cipher], self.cipher)
        return self

    @model_validator(mode="after")
    def _check_transport(self) -> SaConfig:
        """Transport mode sends each packet to its own destination and ESP leaves the
        IP header unauthenticated: only `local` <-> `peer` traffic is sound to carry,
        so the selectors must say exactly that (the policy and RFC 4301 §5.2's
        check on opened packets then hold the addresses to it)."""
        if self.mode != "transport":
            return self
        for j, sel in enumerate(self.selectors):
            for side, field in (("local", "local"), ("remote", "peer")):
                addr = ipaddress.ip_address(getattr(self, field))
                host = (addr.version, int(addr), (1 << addr.max_prefixlen) - 1)
                value = getattr(sel, side)
                if any(net != host for net in parse_cidrs(value)):
                    raise ValueError(
                        f"SA {self.name!r} is in transport mode: selectors[{j}].{side} must "
                        f"be its {field} address {addr} alone, got {value!r}"
                    )
        return self

    @property
    def key(self) -> bytes:
        """The key material (never part of repr, dumps or errors)."""
        return self._key


def _parse_key(text: str, where: str, want: int, cipher: str) -> bytes:
    hexdigits = "".join(text.split()).removeprefix("0x")
    try:
        key = bytes.fromhex(hexdigits)
    except ValueError:
        raise ValueError(f"{where}: expected the key as hex digits") from None
    if len(key) != want:
        raise ValueError(f"{where}: {cipher} needs {want} bytes of key material, got {len(key)}")
    return key


class IpsecConfig(FunctionConfig):
    """Config of the ipsec function."""

    direction: Literal["both", "inbound", "outbound"] = Field(
        default="both",
        description="both: decrypt in SAs and encrypt out SAs; inbound: decrypt only (traffic "
        "for out SAs passes in clear, for a later outbound stage); outbound: encrypt only "
        "(traffic of in SAs passes, decrypted by an earlier stage).",
    )
    sas: list[SaConfig] = Field(min_length=1, description="Security associations.")
    policies: list[Policy] = Field(
        default_factory=list,
        description="Cleartext traffic that no SA covers, first match wins: bypass or discard.",
    )
    default: Literal["bypass", "discard"] = Field(
        default="discard", description="What happens to traffic no SA nor policy covers."
    )
    path_mtu: int = Field(
        default=1500,
        ge=576,
        le=65535,
        strict=True,
        description="Largest outer packet sent; a bigger ESP packet is answered with ICMP "
        "'fragmentation needed' / 'packet too big' to the inner source (RFC 4301 §8).",
    )
    pmtu_answers: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        strict=True,
        description="ICMP 'too big' answers per second of packet time per outbound SA, in "
        "bursts of as many (RFC 4443 §2.4 (f): ICMPv6 errors are rate-limited); a packet "
        "over the rate is dropped as too_big, unanswered.",
    )
    seq_block: int = Field(
        default=4096,
        ge=16,
        le=1 << 24,
        strict=True,
        description="Outbound sequence numbers reserved per changelog write; a crash skips at "
        "most this many.",
    )

    @model_validator(mode="after")
    def _check_unique(self) -> IpsecConfig:
        seen: set[tuple[str, int]] = set()
        names: set[str] = set()
        for i, sa in enumerate(self.sas):
            if sa.name in names:
                raise ValueError(f"sas[{i}]: name {sa.name!r} is used twice")
            names.add(sa.name)
            ident = (sa.direction, sa.spi) if sa.direction == "out" else (sa.local, sa.spi)
            if ident in seen:
                raise ValueError(f"sas[{i}] ({sa.name}): SPI {sa.spi:#x} is used twice")
            seen.add(ident)  # type: ignore[arg-type]
        return self
