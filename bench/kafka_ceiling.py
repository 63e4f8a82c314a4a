"""Benchmark: the Kafka pass-through ceiling: Kafka moving snf's messages, with no function.

    python bench/kafka_ceiling.py --out bench/results/kafka_ceiling.json

The capture is cut into exactly the messages the capture agent would send
(snf.ingress.replay -> Batcher -> snf.wire.encode, with its lineage header),
then, on fresh topics, three kinds of process run at once:

    producer      publishes every message to t0 (partition as the agent would)
    pass-through  N of them: consumes t(i), produces each message unchanged to t(i+1)
    sink          consumes t(N) until it has every message

pps and MB/s (1 MB = 1e6 bytes of the capture agent's messages) count from
the first message produced to the last one consumed. `--ship heads`: the
topics after t0 carry each message cut to its heads, as snf ships them past
ingress (cut beforehand: the pass-throughs still only move bytes). `producer` alone (first send to
all acknowledged) and `consumer` alone (a filled topic read from the start)
are measured too. Each process is its own (spawned) interpreter, as the
capture agent, the workers and the sink are in snf.

Clients, each with the settings snf gives it:
    kafka-python   snf.kafka.producer.TopicProducer, snf.kafka.topic_reader.TopicReader
    aiokafka       the settings Faust passes for snf's workers (snf/runtime/worker/app.py)
    snf            the mix snf runs: kafka-python publishes and sinks, aiokafka passes

Each figure waits for a quiet machine and is re-run while others' processes
took CPU (bench/loadwatch.py); `--rerun-disturbed` re-measures only those of
an earlier --out. Other benchmarks import `measure_ceiling` (bench/chains.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import secrets
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from loadwatch import LoadWatch, add_disturbance_args, median_run
from provenance import changed_since, code_state
from rich.console import Console
from rich.table import Table

from snf import wire
from snf.core.contract import NetworkFunction
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage
from snf.ingress.replay import ReplayOptions, replay
from snf.kafka import cluster
from snf.kafka.admin import delete_topics, ensure_topics
from snf.packet.batch import PacketBatch
from snf.packet.heads import cut_heads

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "traffic" / "zeek-http-bro.org.pcap"
CLIENTS = ("aiokafka", "kafka-python", "snf")
SHIPS = ("whole", "heads")  # what the topics after t0 carry
TIMEOUT = 120.0  # seconds without a result from a role: the measurement failed
# Faust's settings for snf's workers: acks -1, linger 0, batch 16 KiB and no
# compression are Faust's defaults; max request size and the 200 ms fetch wait
# are set in snf/runtime/worker/app.py; 1 MiB per partition is Faust's fetch size.
AIO_PRODUCER = {
    "acks": "all",
    "linger_ms": 0,
    "max_batch_size": 16384,
    "max_request_size": 4 << 20,
    "compression_type": None,
}
AIO_CONSUMER = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_partition_fetch_bytes": 1 << 20,
    "fetch_max_wait_ms": 200,
}
Message = tuple[int, bytes, list[tuple[str, bytes]]]  # partition, value, headers


class CeilingError(RuntimeError):
    """A role failed or stalled."""


@dataclass
class Messages:
    items: list[Message]
    heads: list[bytes]  # each item's value with its packets cut to heads (snf.packet.heads)
    packets: int
    bytes: int  # message values, headers excluded

    @property
    def heads_bytes(self) -> int:
        return sum(map(len, self.heads))

    def heads_by_partition(self) -> dict[int, list[bytes]]:
        """What a pass-through sends on a heads topic: the n-th head of each partition."""
        out: dict[int, list[bytes]] = {}
        for (part, _, _), head in zip(self.items, self.heads, strict=True):
            out.setdefault(part, []).append(head)
        return out


_cache: dict[tuple, Messages] = {}


def build_messages(
    captures: Sequence[Path],
    loop: int,
    batch: int,
    partitions: int,
    keyers: Sequence[NetworkFunction] = (),
) -> Messages:
    """The capture agent's messages: same batching, routing, encoding and lineage header."""
    kinds = tuple(type(k).__name__ for k in keyers)
    key = (tuple(map(str, captures)), loop, batch, partitions, kinds)
    if key in _cache:
        return _cache[key]
    items: list[Message] = []
    heads: list[bytes] = []

    def publish(partition: int, b: PacketBatch) -> None:
        last = int(b.records["seq"].max())
        lineage = Lineage(f"{CAPTURE_ORIGIN}ceiling/{partition}", last, 0)
        items.append((partition, wire.encode(b), [lineage.header()]))
        heads.append(wire.encode(cut_heads(b)))

    opts = ReplayOptions(loop=loop, max_packets=batch, progress=False)
    summary = replay(captures, partitions, publish, opts, Console(quiet=True), keyers=keyers)
    _cache.clear()  # one set at a time: a looped capture is ~100 MB
    _cache[key] = Messages(items, heads, summary.packets, sum(len(v) for _, v, _ in items))
    return _cache[key]


@contextlib.contextmanager
def broker(brokers: str | None = None) -> Iterator[str]:
    """The running broker (`snf kafka up`, SNF_BROKERS, --brokers), or one started and
    stopped here."""
    found = cluster.resolve_brokers(brokers)
    if found is not None and cluster.is_reachable(found):
        yield found
        return
    if brokers:
        raise CeilingError(f"no Kafka broker answers at {brokers}")
    info = cluster.up()
    try:
        yield info.bootstrap
    finally:
        cluster.down()


def _cpu(pid: int | str = "self") -> float:
    """CPU seconds (user + system, all threads) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_cpu() -> float | None:
    """CPU seconds of the recorded local broker's nodes (None: not ours to see)."""
    info = cluster.recorded()
    try:
        return sum(_cpu(n.pid) for n in info.nodes if n.pid) if info else None
    except OSError:
        return None


# -- the roles, each in its own process --------------------------------------------------


def _child(role: str, spec: dict[str, Any], q: Any, go: Any) -> None:
    cpu = [0.0]

    def ready() -> None:
        q.put({"kind": "ready", "index": spec["index"]})
        go.wait()
        cpu[0] = _cpu()

    try:
        if spec["client"] == "aiokafka":
            coro = _aio_produce if role == "produce" else _aio_consume
            result = asyncio.run(coro(spec, ready, go))
        else:
            result = (_kp_produce if role == "produce" else _kp_consume)(spec, ready, go)
        result["cpu_seconds"] = _cpu() - cpu[0]
        q.put({"kind": "result", "index": spec["index"], "role": role, **result})
    except BaseException:
        q.put({"kind": "error", "index": spec["index"], "error": traceback.format_exc()})


def _forwarder(spec: dict[str, Any]) -> Any:
    """value -> what to produce: the same, or on a heads topic the message's heads
    (precomputed: cutting is a function's work, not Kafka's)."""
    heads = spec.get("heads")
    if heads is None:
        return lambda part, value: value
    seen = dict.fromkeys(heads, 0)

    def forward(part: int, value: bytes) -> bytes:
        seen[part] += 1
        return heads[part][seen[part] - 1]

    return forward


def _kp_produce(spec: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    from snf.kafka.producer import TopicProducer

    producer = TopicProducer(spec["brokers"], spec["topic"])
    producer.producer.partitions_for(spec["topic"])  # metadata now, not in the timed part
    ready()
    first = time.monotonic()
    for part, value, headers in spec["messages"]:
        producer.send(part, value, headers)
    producer.flush()
    acked = time.monotonic()
    producer.close()
    return {"first": first, "last": acked, "messages": len(spec["messages"])}


def _kp_consume(spec: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    from snf.kafka.producer import TopicProducer
    from snf.kafka.topic_reader import TopicReader

    reader = TopicReader(spec["brokers"], [spec["src"]])
    producer = TopicProducer(spec["brokers"], spec["dst"]) if spec.get("dst") else None
    if producer is not None:
        producer.producer.partitions_for(spec["dst"])
    ready()
    forward = _forwarder(spec)
    first = progress = last = time.monotonic()
    n = size = 0
    while n < spec["expected"]:
        for _topic, part, records in reader.poll(200):
            for r in records:
                if producer is not None:
                    producer.send(part, forward(part, r.value), list(r.headers))
                size += len(r.value)
            n += len(records)
            last = progress = time.monotonic()
        if time.monotonic() - progress > TIMEOUT:
            raise CeilingError(f"{spec['src']}: {n} of {spec['expected']} messages")
    if producer is not None:
        producer.close()
    reader.close()
    return {"first": first, "last": last, "messages": n, "bytes": size}


async def _aio_produce(spec: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=spec["brokers"], **AIO_PRODUCER)
    await producer.start()
    await producer.partitions_for(spec["topic"])
    await asyncio.to_thread(ready)
    first = time.monotonic()
    for part, value, headers in spec["messages"]:
        # Not awaiting each delivery: as Faust's send(force=True) in snf's worker.
        await producer.send(spec["topic"], value, partition=part, headers=headers)
    await producer.flush()
    acked = time.monotonic()
    await producer.stop()
    return {"first": first, "last": acked, "messages": len(spec["messages"])}


async def _aio_consume(spec: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=spec["brokers"], **AIO_CONSUMER)
    await consumer.start()
    await consumer.topics()  # metadata now
    producer = None
    if spec.get("dst"):
        producer = AIOKafkaProducer(bootstrap_servers=spec["brokers"], **AIO_PRODUCER)
        await producer.start()
        await producer.partitions_for(spec["dst"])
    forward = _forwarder(spec)
    await asyncio.to_thread(ready)
    # Assigned only now: aiokafka's fetcher would otherwise read ahead before the start.
    first = progress = last = time.monotonic()
    tps = [TopicPartition(spec["src"], p) for p in range(spec["partitions"])]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    n = size = 0
    while n < spec["expected"]:
        for tp, records in (await consumer.getmany(timeout_ms=200)).items():
            for r in records:
                if producer is not None:
                    value = forward(tp.partition, r.value)
                    await producer.send(
                        spec["dst"], value, partition=tp.partition, headers=list(r.headers)
                    )
                size += len(r.value)
            n += len(records)
            last = progress = time.monotonic()
        if time.monotonic() - progress > TIMEOUT:
            raise CeilingError(f"{spec['src']}: {n} of {spec['expected']} messages")
    if producer is not None:
        await producer.flush()
        await producer.stop()
    await consumer.stop()
    return {"first": first, "last": last, "messages": n, "bytes": size}


# -- one measurement ----------------------------------------------------------------------


def _run_roles(roles: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Start every role, wait until all are connected, start them at once, collect.

    One more entry at the end: the broker's CPU seconds and the disturbance
    (LoadWatch) from the start to the last result."""
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    procs = []
    for i, (role, spec) in enumerate(roles):
        procs.append(ctx.Process(target=_child, args=(role, {**spec, "index": i}, q, go)))
        procs[-1].start()
    try:
        _collect(q, "ready", roles)
        broker_before = _broker_cpu()
        with LoadWatch() as watch:
            go.set()
            results = _collect(q, "result", roles)
        broker_after = _broker_cpu()
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
    used = None if broker_before is None or broker_after is None else broker_after - broker_before
    extra = {"cpu_seconds": used, "disturbance": watch.report()}
    return [results[i] for i in range(len(procs))] + [extra]


def _collect(q: Any, kind: str, roles: list[tuple[str, dict[str, Any]]]) -> dict[int, Any]:
    """One message of `kind` from every role, by role index (CeilingError on failure)."""
    got: dict[int, Any] = {}
    while len(got) < len(roles):
        try:
            msg = q.get(timeout=TIMEOUT)
        except queue.Empty:
            raise CeilingError(f"no {kind} from a role within {TIMEOUT:.0f}s") from None
        if msg["kind"] == "error":
            raise CeilingError(f"role {roles[msg['index']][0]} failed:\n{msg['error']}")
        got[msg["index"]] = msg
    return got


def _clients(client: str) -> tuple[str, str, str]:
    """(producer, pass-through, sink) client of a measurement."""
    if client not in CLIENTS:
        raise CeilingError(f"unknown client {client!r}; one of {', '.join(CLIENTS)}")
    return ("kafka-python", "aiokafka", "kafka-python") if client == "snf" else (client,) * 3


def _rates(msgs: Messages, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 3),
        "pps": round(msgs.packets / seconds),
        "mb_per_s": round(msgs.bytes / seconds / 1e6, 1),
    }


def _header(msgs: Messages, client: str, partitions: int) -> dict[str, Any]:
    return {
        "client": client,
        "partitions": partitions,
        "messages": len(msgs.items),
        "packets": msgs.packets,
        "bytes": msgs.bytes,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _topics(brokers: str, hops: int, partitions: int) -> list[str]:
    base = f"snf-ceiling-{secrets.token_hex(3)}"
    names = [f"{base}.t{i}" for i in range(hops + 1)]
    ensure_topics(brokers, dict.fromkeys(names, partitions))
    return names


def measure_ceiling(
    capture_paths: Sequence[Path],
    loop: int,
    batch: int,
    hops: int,
    client: str,
    partitions: int,
    *,
    brokers: str | None = None,
    keyers: Sequence[NetworkFunction] = (),
    ship: str = "whole",
) -> dict[str, Any]:
    """Producer -> `hops` pass-through processes -> sink, at once, on fresh topics.

    `keyers`: partition as a pipeline's capture agent would (its ingress hop);
    default the flow hash. `ship="heads"`: the topics after t0 carry each
    message cut to its heads, as snf ships them past ingress (the cut is done
    beforehand). Starts (and stops) a broker only if none answers.
    """
    if ship not in SHIPS:
        raise CeilingError(f"ship: one of {', '.join(SHIPS)}, not {ship!r}")
    producer_client, pass_client, sink_client = _clients(client)
    msgs = build_messages(capture_paths, loop, batch, partitions, keyers)
    with broker(brokers) as bootstrap:
        topics = _topics(bootstrap, hops, partitions)
        head = _header(msgs, client, partitions)
        common = {"brokers": bootstrap, "partitions": partitions, "expected": len(msgs.items)}
        roles = [("produce", {**common, "client": producer_client, "topic": topics[0]})]
        roles[0][1]["messages"] = msgs.items
        heads = msgs.heads_by_partition() if ship == "heads" else None
        for i in range(hops):
            spec = {**common, "client": pass_client, "src": topics[i], "dst": topics[i + 1]}
            roles.append(("consume", {**spec, "heads": heads}))
        roles.append(("consume", {**common, "client": sink_client, "src": topics[-1]}))
        try:
            *results, extra = _run_roles(roles)
        finally:
            delete_topics(bootstrap, topics)
    first, sink = results[0]["first"], results[-1]
    last_bytes = msgs.heads_bytes if heads and hops else msgs.bytes
    if sink["messages"] != len(msgs.items) or sink["bytes"] != last_bytes:
        raise CeilingError(f"the sink got {sink['messages']} messages, {sink['bytes']} bytes")
    return {
        "what": _what(hops, ship),
        "hops": hops,
        "ship": ship,
        **head,
        "heads_bytes": msgs.heads_bytes if heads and hops else None,
        **_rates(msgs, sink["last"] - first),
        "producer_seconds": round(results[0]["last"] - first, 3),
        "cpu_seconds": _cpu_split(results, extra["cpu_seconds"]),
        "disturbance": extra["disturbance"],
    }


def _what(hops: int, ship: str) -> str:
    return f"{hops} hop{'s' * (hops != 1)}" + (", heads" if ship == "heads" and hops else "")


def _cpu_split(results: list[dict[str, Any]], broker_cpu: float | None) -> dict[str, Any]:
    """Where the CPU went: each role from the start to its end, and the broker."""
    cpu: dict[str, Any] = {results[0]["role"]: round(results[0]["cpu_seconds"], 2)}
    if len(results) > 2:
        cpu["pass_through"] = [round(r["cpu_seconds"], 2) for r in results[1:-1]]
    if len(results) > 1:
        cpu["sink"] = round(results[-1]["cpu_seconds"], 2)
    cpu["broker"] = None if broker_cpu is None else round(broker_cpu, 2)
    return cpu


def measure_alone(
    capture_paths: Sequence[Path],
    loop: int,
    batch: int,
    role: str,
    client: str,
    partitions: int,
    *,
    brokers: str | None = None,
) -> dict[str, Any]:
    """`produce`: the producer alone, first send to all acknowledged. `consume`: a
    consumer alone, reading a topic the producer filled beforehand from the start."""
    producer_client, _, sink_client = _clients(client)
    msgs = build_messages(capture_paths, loop, batch, partitions)
    with broker(brokers) as bootstrap:
        (topic,) = _topics(bootstrap, 0, partitions)
        common = {"brokers": bootstrap, "partitions": partitions, "expected": len(msgs.items)}
        try:
            spec = {**common, "client": producer_client, "topic": topic, "messages": msgs.items}
            head = _header(msgs, client, partitions)
            result, extra = _run_roles([("produce", spec)])
            if role == "consume":
                head = _header(msgs, client, partitions)
                spec = {**common, "client": sink_client, "src": topic}
                result, extra = _run_roles([("consume", spec)])
        finally:
            delete_topics(bootstrap, [topic])
    return {
        "what": {"produce": "producer", "consume": "consumer"}[role],
        **head,
        **_rates(msgs, result["last"] - result["first"]),
        "cpu_seconds": _cpu_split([result], extra["cpu_seconds"]),
        "disturbance": extra["disturbance"],
    }


# -- the command --------------------------------------------------------------------------


def settings() -> dict[str, Any]:
    """What each client runs with, for the record."""
    return {
        "kafka-python producer": "snf.kafka.producer.TopicProducer: acks=all, linger_ms=5, "
        "batch_size=1 MiB, max_request_size=8 MiB, 1 request in flight, no compression",
        "kafka-python consumer": "snf.kafka.topic_reader.TopicReader: no group, "
        "max_partition_fetch_bytes=16 MiB, fetch_max_bytes=64 MiB",
        "aiokafka producer": dict(AIO_PRODUCER),
        "aiokafka consumer": {**AIO_CONSUMER, "group": None},
    }


def warm_up(bootstrap: str, capture_paths: Sequence[Path], partitions: int) -> None:
    """A short run first: a fresh broker's JVM is slower until its code is compiled."""
    for client in ("kafka-python", "aiokafka"):
        measure_ceiling(capture_paths, 20, 512, 1, client, partitions, brokers=bootstrap)


def show(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for name in ("client", "what", "packets/s", "MB/s", "seconds", "others' CPU", "load"):
        table.add_column(name, justify="left" if name in ("client", "what") else "right")
    for r in rows:
        table.add_row(
            r["client"],
            r["what"],
            f"{r['pps']:,}",
            f"{r['mb_per_s']}",
            f"{r['seconds']}",
            f"{r['disturbance']['others_share']:.0%}",
            f"{r['loadavg'][0]:.2f}",
        )
    console.print(table)


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, nargs="+", default=[CAPTURE])
    ap.add_argument("--loop", type=int, default=200)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--hops", default="0,1,4", help="pass-through counts, comma separated")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="comma separated")
    ap.add_argument("--ship", default="whole,heads", help="what topics after t0 carry")
    add_disturbance_args(ap, repeats=3)
    ap.add_argument(
        "--rerun-disturbed",
        action="store_true",
        help="re-measure only the figures of --out disturbed beyond --max-disturbance",
    )
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kafka_ceiling.json")
    return ap.parse_args()


def _jobs(args: argparse.Namespace, client: str) -> list[tuple[str, Any]]:
    """(what, measurement) of one client, each measurement a callable wanting `brokers`."""
    shape = (args.capture, args.loop, args.batch)
    # The snf mix publishes and sinks with kafka-python: its "alone" figures are those.
    roles = [] if client == "snf" else ["produce", "consume"]
    jobs = [
        ({"produce": "producer", "consume": "consumer"}[role], partial(measure_alone, *shape, role))
        for role in roles
    ]
    for hops in (int(h) for h in args.hops.split(",")):
        for ship in args.ship.split(","):
            if hops or ship == "whole":
                jobs.append((_what(hops, ship), partial(measure_ceiling, *shape, hops, ship=ship)))
    return [(what, partial(fn, client=client, partitions=args.partitions)) for what, fn in jobs]


def _new_report(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "benchmark": "Kafka pass-through ceiling: producer -> N pass-through -> sink, at once",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "captures": [p.name for p in args.capture],
        "loop": args.loop,
        "batch_packets": args.batch,
        "settings": settings(),
        "repeats": args.repeats,
        "code": code_state(),
        "measurements": [],
    }


def main() -> None:
    args = _arguments()
    console = Console(stderr=True)
    report = _new_report(args)
    rows = report["measurements"]
    redo: set[tuple[str, str]] | None = None  # None: measure everything
    if args.rerun_disturbed:
        # Only the figures others disturbed in an earlier run, replaced in place.
        report = json.loads(args.out.read_text())
        rows = report["measurements"]
        limit = args.max_disturbance
        redo = {(r["client"], r["what"]) for r in rows if r["disturbance"]["others_share"] > limit}
        report.setdefault("reruns", []).append({"at": _now(), "code": code_state(), "redo": []})
    started = time.perf_counter()
    quiet = {"repeats": args.repeats, "tries": args.tries, "max_share": args.max_disturbance}
    with broker(args.brokers) as bootstrap:
        warm_up(bootstrap, args.capture, args.partitions)
        for client in args.clients.split(","):
            for what, fn in _jobs(args, client):
                if redo is not None and (client, what) not in redo:
                    continue
                row = {"at": _now(), **median_run(partial(fn, brokers=bootstrap), **quiet)}
                _put(rows, row)
                if redo is not None:
                    report["reruns"][-1]["redo"].append(f"{client} {what}")
                pps, mbs = row["pps"], row["mb_per_s"]
                console.print(f"{client} {what}: {pps:,} pkt/s, {mbs} MB/s")
    _finish(args, report, time.perf_counter() - started)
    show(console, rows, f"Kafka ceiling: {report['measurements'][0]['packets']:,} packets")
    console.print(f"wrote {args.out}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _put(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append `row`, or replace the row of the same client and figure."""
    for i, old in enumerate(rows):
        if (old["client"], old["what"]) == (row["client"], row["what"]):
            rows[i] = row
            return
    rows.append(row)


def _finish(args: argparse.Namespace, report: dict[str, Any], seconds: float) -> None:
    msgs = build_messages(args.capture, args.loop, args.batch, args.partitions)
    report["mean_message_bytes"] = round(msgs.bytes / len(msgs.items))
    report["mean_heads_message_bytes"] = round(msgs.heads_bytes / len(msgs.items))
    now = report["reruns"][-1] if "reruns" in report else report
    now.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    now["code"]["changed_during_run"] = changed_since(now["code"])
    now["seconds"] = round(seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
