"""L4 load balancer: weighted Maglev hashing, per-flow affinity, NAT both ways.

Summary
    Services are virtual endpoints (VIP "IP:port" + tcp|udp), each with a pool
    of weighted backends. The first packet of a client flow to a VIP picks a
    backend by weighted Maglev consistent hashing of its 5-tuple (Maglev's
    table, Katran's weights; see maglev.py here) and the choice is recorded.
    Every later packet of the flow goes to the recorded backend, also
    after the pool changed, unless that backend has left the pool (then the
    flow is re-picked through the new table). As IPVS in NAT mode, the
    destination of client packets is rewritten to the backend (address and
    port), and the source of the backend's replies back to the VIP, with
    incremental IPv4 header and TCP/UDP checksum updates (RFC 1624). IPv4 and
    IPv6 (a service's VIP and backends share one version). Time is packet time.
    IPv4 packets of the services take a batch path (fastpath.py, bulk.py:
    rewrites a batch at a time) with the per-packet path's results.

Ports
    pass    everything that is not dropped: rewritten client and reply packets,
            and untouched traffic (not for a VIP, replies without a recorded
            flow, non-IP)
    drop    reason "no_backend" (a VIP whose pool is empty), "fragment" (a
            non-first fragment to a VIP address whose first fragment was not
            seen in the last 30 s), "malformed"

Config (LoadBalancerConfig)
    services    list of {vip: "IP:port" or "[IPv6]:port", proto: tcp|udp,
                backends: [{address: "IP:port", weight: int >= 1 (1)}]};
                an empty pool is allowed (its VIP drops "no_backend")
    table_size  Maglev table size per service, a prime >= every pool's size
                (default 65537)
    timeouts    idle seconds (packet time): tcp 900, tcp_fin 120 (after a FIN
                both ways or a RST), tcp_syn 120 (opened by a bare SYN, no
                reply yet: half-open), udp 300
    max_entries     conn entries per partition, default 1,000,000
    sweep_interval  seconds of packet time between sweeps, default 1 (0: none)

State
    conn  key: proto u8 + client addr + client port u16 + vip addr + vip port u16
          value: [backend addr hex, backend port, last_seen_ns, bits]
          (bit 0: FIN from the client, bit 1: FIN from the backend, a RST sets
          both; bit 2: half-open, opened by a bare SYN; bit 3: unanswered;
          a packet from the backend clears bits 2 and 3)
    back  key: proto u8 + backend addr + backend port u16 + client addr + client port u16
          value: [vip addr hex, vip port]; how a reply finds its conn entry
    frag  key: version u8 + src + dst + proto u8 + IP id u32 (the first fragment
          as received) -> [first_fragment_ts_ns, new addr hex, 0: dst | 1: src]
    Expiry: an expired conn entry counts as absent (a client packet re-picks
    and overwrites it; a reply finding it deletes it and its back entry), and
    the sweep deletes it with its back entry; frag entries go 30 s after
    their first fragment, lazily and by the sweep (bounds.py). A full conn
    table (max_entries) evicts, before a new flow is stored, the unanswered
    flow due first, else the flow due first. A key is written only when its
    value changes.

Partitioning
    key "custom", flow-consistent: key_hashes() gives each packet the
    endpoint_hash of its client end: the source of a packet to a VIP or to a
    backend endpoint, the destination of one from a VIP or from a backend
    endpoint; None (no preference) for anything else. So a client's packets
    and its backend's replies meet on one partition, where the state is.

Metrics
    the engine's counters: "in", "pass", "drop:<reason>"; and the core's
    metrics "to_backend", "to_client" (packets rewritten each way), "new"
    (flows picked), "moved" (flows re-picked because their backend left),
    "evicted" (conn entries evicted from a full table)

Example (a step of a pipeline file)
    - name: lb
      function: loadbalancer
      config:
        services:
          - vip: 192.0.2.10:80
            proto: tcp
            backends:
              - {address: 10.1.0.1:8080, weight: 2}
              - {address: 10.1.0.2:8080}
        timeouts: {tcp: 600}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from snf.core.contract import (
    BoundedStateConfig,
    Decisions,
    FunctionConfig,
    NetworkFunction,
    Record,
    SweepContext,
)
from snf.core.limits import Seconds
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers

from .bounds import Bounds
from .fastpath import Roles, cached_key_hashes, process_fast
from .maglev import MAX_TABLE_SIZE, build_table, is_prime
from .net import PROTOS, parse_endpoint
from .process import METRICS, REASONS, Service, key_hashes, process_batch

__all__ = ["LBBackend", "LBService", "LBTimeouts", "LoadBalancer", "LoadBalancerConfig"]

_NS = 1_000_000_000


class LBBackend(BaseModel, extra="forbid"):
    """One backend of a service's pool."""

    address: str = Field(description="Backend endpoint 'IP:port' or '[IPv6]:port'.")
    weight: int = Field(
        default=1,
        ge=1,
        le=65535,
        strict=True,
        description="Share of new flows relative to the other backends of the pool.",
    )

    @field_validator("address", mode="before")
    @classmethod
    def _check_address(cls, value: Any) -> Any:
        parse_endpoint(value)
        return value


class LBService(BaseModel, extra="forbid"):
    """One virtual service: a VIP endpoint and its backend pool."""

    vip: str = Field(description="Virtual endpoint 'IP:port' or '[IPv6]:port' clients connect to.")
    proto: Literal["tcp", "udp"] = Field(description="Transport protocol of the service.")
    backends: list[LBBackend] = Field(
        description="The pool; may be empty (the VIP then drops packets with no_backend)."
    )

    @field_validator("vip", mode="before")
    @classmethod
    def _check_vip(cls, value: Any) -> Any:
        parse_endpoint(value)
        return value

    @field_validator("backends")
    @classmethod
    def _check_pool(cls, value: list[LBBackend], info: ValidationInfo) -> list[LBBackend]:
        vip = info.data.get("vip")
        version = parse_endpoint(vip)[0] if vip is not None else None
        seen: dict[tuple[bytes, int], int] = {}
        for i, backend in enumerate(value):
            v, addr, port = parse_endpoint(backend.address)
            if version is not None and v != version:
                raise ValueError(
                    f"backend {i} ({backend.address}) is IPv{v} but the vip {vip} is "
                    f"IPv{version}; a service's vip and backends must share one IP version"
                )
            if (addr, port) in seen:
                raise ValueError(
                    f"duplicate backend {backend.address} (backends {seen[addr, port]} and {i})"
                )
            seen[addr, port] = i
        return value


class LBTimeouts(BaseModel, extra="forbid"):
    """Idle lifetimes in seconds (packet time) of a flow's recorded backend."""

    tcp: Seconds = Field(default=900, description="TCP flow idle timeout (IPVS: 15 min).")
    tcp_fin: Seconds = Field(
        default=120, description="TCP flow after a FIN in both directions, or a RST."
    )
    tcp_syn: Seconds = Field(
        default=120,
        description="TCP flow opened by a bare SYN that its backend has not answered "
        "yet (half-open; Linux conntrack's syn_sent).",
    )
    udp: Seconds = Field(default=300, description="UDP flow idle timeout (IPVS: 5 min).")


class LoadBalancerConfig(BoundedStateConfig):
    """Config of the loadbalancer function."""

    services: list[LBService] = Field(
        default_factory=list, description="The virtual services; each VIP at most once."
    )
    table_size: int = Field(
        default=65537,
        strict=True,
        description=f"Maglev lookup table size per service: a prime, at least the size of "
        f"every pool and at most {MAX_TABLE_SIZE}. Maglev suggests >= 100x the pool size.",
    )
    timeouts: LBTimeouts = Field(
        default_factory=LBTimeouts, description="Idle timeouts in seconds."
    )

    @field_validator("services")
    @classmethod
    def _check_services(cls, value: list[LBService]) -> list[LBService]:
        vips: dict[tuple[str, bytes, int], int] = {}
        for i, svc in enumerate(value):
            _, addr, port = parse_endpoint(svc.vip)
            key = (svc.proto, addr, port)
            if key in vips:
                raise ValueError(
                    f"duplicate vip {svc.proto} {svc.vip} (services {vips[key]} and {i})"
                )
            vips[key] = i
        for i, svc in enumerate(value):
            for j, backend in enumerate(svc.backends):
                _, addr, port = parse_endpoint(backend.address)
                if (svc.proto, addr, port) in vips:
                    raise ValueError(
                        f"services {i} backend {j} ({backend.address}) is also the vip of "
                        f"services {vips[svc.proto, addr, port]}; a vip cannot be a backend"
                    )
        return value

    @field_validator("table_size")
    @classmethod
    def _check_table_size(cls, value: int, info: ValidationInfo) -> int:
        if not 2 <= value <= MAX_TABLE_SIZE or not is_prime(value):
            raise ValueError(f"expected a prime number in 2..{MAX_TABLE_SIZE}, got {value}")
        for i, svc in enumerate(info.data.get("services") or ()):
            if len(svc.backends) > value:
                raise ValueError(
                    f"expected at least the pool size of every service, got {value} but "
                    f"services {i} ({svc.vip}) has {len(svc.backends)} backends"
                )
        return value


class LoadBalancer(NetworkFunction):
    """L4 load balancer core; see the module docstring."""

    kind: ClassVar[str] = "loadbalancer"
    ports: ClassVar[tuple[str, ...]] = ("pass", "drop")
    reasons: ClassVar[tuple[str, ...]] = REASONS  # malformed, no_backend, fragment
    metrics: ClassVar[tuple[str, ...]] = METRICS  # new, moved, to_backend, to_client, evicted
    tables: ClassVar[tuple[str, ...]] = ("conn", "back", "frag")
    Config: ClassVar[type[FunctionConfig]] = LoadBalancerConfig
    # Client flows and the backend's replies meet on the client endpoint's partition.
    key = "custom"
    key_flow_consistent = True

    def __init__(self, config: LoadBalancerConfig) -> None:
        super().__init__(config)
        self.config: LoadBalancerConfig = config
        size = config.table_size
        self.services: dict[tuple[int, bytes, int], Service] = {}
        self.backends: set[tuple[int, bytes, int]] = set()
        self.vip_addrs: set[tuple[int, bytes]] = set()  # (proto, addr): for later fragments
        for svc in config.services:
            proto = PROTOS[svc.proto]
            _, vaddr, vport = parse_endpoint(svc.vip)
            pool = [(*parse_endpoint(b.address)[1:], b.weight) for b in svc.backends]
            table = build_table(pool, size)
            members = [(addr, port) for addr, port, _ in pool]
            self.services[proto, vaddr, vport] = Service(
                vip=vaddr,
                vport=vport,
                members=members,
                by_hex={(a.hex(), p): (a, p) for a, p in members},
                ends={(a.hex(), p): a + p.to_bytes(2, "big") for a, p in members},
                table=table,
                size=size,
            )
            self.backends.update((proto, a, p) for a, p in members)
            self.vip_addrs.add((proto, vaddr))
        t = config.timeouts
        self.timeout_ns = (
            round(t.tcp * _NS),
            round(t.tcp_fin * _NS),
            round(t.udp * _NS),
            round(t.tcp_syn * _NS),
        )
        # Per partition, when each conn and frag entry expires (bounds.py).
        self.bounds = Bounds(self.timeout_ns, config.max_entries)
        self.ep_hashes: dict[tuple[int, bytes, int], int] = {}
        self.roles = Roles(self)
        # The batch path (fastpath.py); False: every packet through process.PacketRun,
        # as before it, which the equivalence tests compare it with.
        self.fast_path = True

    def process(self, batch: PacketBatch, headers: Headers, state: BatchState) -> Decisions:
        if self.fast_path:
            return process_fast(self, self.roles, batch, headers, state)
        return process_batch(self, batch, headers, state)

    def sweep(self, state: BatchState, ctx: SweepContext) -> dict[str, list[Record]]:
        """Delete the flows (conn and back) and frag entries expired by ctx.now_ns."""
        self.bounds.sweep(state, ctx)
        return {}

    def forget(self, partition: int) -> None:
        self.bounds.forget(partition)

    def key_hashes(self, batch: PacketBatch, headers: Headers) -> Sequence[int | None]:
        """Per packet: the client endpoint's hash, or None (see docs, "Partitioning")."""
        if self.fast_path:
            return cached_key_hashes(self, self.roles, headers)
        return key_hashes(self, headers)
