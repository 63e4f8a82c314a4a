"""Benchmark: the ipsec function's ESP rates against OpenSSL's on the same machine.

    python bench/ipsec.py --out bench/results/ipsec.json [--seconds 0.4] [--skip-kafka]
        [--packets 30000] [--kafka-ciphers aes-gcm-128,...] [--kafka-sizes 64,512,1400]

core      packets/s through the Ipsec core (FunctionEngine.handle: parse, policy,
          sequence numbers, ESP, the outer header, state write-back) with
          in-memory state, batches of 512, one process: encrypt (direction
          outbound) and decrypt (direction inbound, replay window on) for every
          cipher and IP packet size (64, 512, 1400 bytes). Warm; each figure
          is the best of 3 runs of about --seconds each.
raw       EspTransform.seal / open alone on the same packets, one call per packet:
          the crypto plus ESP framing; core / raw is what the core adds.
openssl   the ceiling: `openssl speed -elapsed -seconds 1 -bytes SIZE -evp ...`
          on the same machine in the same run, as bytes/s and packets/s of
          SIZE. GCM: `-evp aes-N-gcm` (the `-aead` figure, IV, AAD and tag
          per buffer as TLS does, is kept beside it). CBC+HMAC:
          `-evp aes-N-cbc` and `-hmac sha256` back to back (1 / (1/cbc +
          1/hmac)). Decrypt ratios use `-decrypt` figures (GCM, CBC).
          `ratio` = snf's packets/s / OpenSSL's at that size: absolute rates
          move 2-3x between machines, ratios much less.
kafka     encrypt and decrypt over Kafka for every cipher and size (the
          matrix: `--kafka-ciphers` x `--kafka-sizes` x 2 functions, default
          all 4 x 3 x 2 = 24 combinations, on one broker): one ipsec function
          (one SA of that cipher, outbound or inbound) deployed with `snf run`
          (snf.harness) on a generated capture of --packets packets of that
          size in 8 flows (decrypt: the same packets sealed into ESP), beside
          the Kafka pass-through ceiling (bench/kafka_ceiling.py's
          measure_ceiling, one hop) on the same capture in the same run;
          `--local` of the same pipeline too; ratio_to_ceiling = Kafka pps /
          ceiling pps. The worker's /metrics are scraped while it runs:
          seq_reserved (sequence blocks reserved) and the Processor's stage
          times (`reserve`: waiting for a reserved table's write to be
          acknowledged). --packets defaults to 30,000 so that the full matrix
          takes about 6-8 minutes on a quiet machine (15-20 s a combination:
          three timed runs, each after a quiet second, and a worker's start),
          under 12 with re-runs of disturbed figures; narrow it for a quick
          look. The shape is in bench/ipsec_kafka.py's docstring.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dpkt
from loadwatch import LoadWatch
from provenance import code_state, write_report
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.functions.ipsec import Ipsec, IpsecConfig
from snf.functions.ipsec.esp import CIPHERS, KEY_BYTES, EspTransform
from snf.packet.batch import PacketBatch

ROOT = Path(__file__).resolve().parents[1]
SIZES = (64, 512, 1400)  # bytes of IP packet
BATCH = 512
SPI = 0x2001
GATEWAY_A, GATEWAY_B = "192.0.2.1", "198.51.100.2"
LAN_A, LAN_B = "10.1.0.0/16", "10.2.0.0/16"
T0 = 1_700_000_000 * 10**9
COLUMNS = ("cipher", "bytes", "encrypt", "ratio", "decrypt", "ratio ", "seal", "open", "openssl")
KAFKA_COLUMNS = ("cipher", "bytes", "encrypt", "ratio", "decrypt", "ratio ")
MAC = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def key(cipher: str) -> bytes:
    return bytes((7 * i + 3) % 256 for i in range(KEY_BYTES[cipher]))


def ip_packet(size: int, flow: int, n: int) -> bytes:
    """IPv4/UDP from LAN A to LAN B of exactly `size` bytes."""
    payload = bytes((n + i) % 251 for i in range(size - 28))
    udp = dpkt.udp.UDP(sport=40000 + flow, dport=4500 + flow, data=payload)
    ip = dpkt.ip.IP(src=bytes((10, 1, 0, 1 + flow)), dst=bytes((10, 2, 0, 1 + flow)), p=17)
    ip.data, ip.id, ip.df = udp, n & 0xFFFF, 1
    raw = bytes(ip)
    assert len(raw) == size
    return raw


def frames(size: int, count: int, flows: int = 8) -> list[bytes]:
    return [MAC + b"\x08\x00" + ip_packet(size, n % flows, n) for n in range(count)]


def sa_config(cipher: str, out: bool) -> dict[str, Any]:
    env = f"SNF_BENCH_IPSEC_{CIPHERS.index(cipher)}"
    os.environ[env] = key(cipher).hex()
    local, peer, mine, theirs = (
        (GATEWAY_A, GATEWAY_B, LAN_A, LAN_B) if out else (GATEWAY_B, GATEWAY_A, LAN_B, LAN_A)
    )
    return {
        "name": "out" if out else "in",
        "direction": "out" if out else "in",
        "spi": SPI,
        "local": local,
        "peer": peer,
        "cipher": cipher,
        "key_env": env,
        "selectors": [{"local": mine, "remote": theirs}],
    }


def engine(cipher: str, out: bool) -> FunctionEngine:
    config = {"direction": "outbound" if out else "inbound", "sas": [sa_config(cipher, out)]}
    return FunctionEngine(Ipsec(IpsecConfig.model_validate(config)))


def batches(packets: list[bytes]) -> list[PacketBatch]:
    rows = [(T0 + i * 1000, len(p), p, 1, i, "") for i, p in enumerate(packets)]
    return [PacketBatch.from_rows(1, rows[i : i + BATCH], i) for i in range(0, len(rows), BATCH)]


def best_rate(run: Callable[[int], int], seconds: float) -> dict[str, Any]:
    """`run(n)` handles n units (batches or packets) and returns the packets it
    handled: warmed, sized to about `seconds`, best of 3 by packets/s."""
    run(1)
    t = time.perf_counter()
    run(1)
    n = max(2, round(seconds / max(time.perf_counter() - t, 1e-6)))
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        packets = run(n)
        rates.append(packets / (time.perf_counter() - t))
    return {"pps": round(max(rates)), "runs_pps": [round(r) for r in rates], "packets": packets}


def core_rates(cipher: str, size: int, seconds: float) -> dict[str, Any]:
    """Encrypt and decrypt packets/s through the core, checked to be all 'pass'."""
    enc, stores = engine(cipher, True), BatchState.memory(Ipsec.tables)
    plain = batches(frames(size, BATCH * 4))

    def encrypt(n: int) -> int:
        for i in range(n):
            out = enc.handle(plain[i % len(plain)], BatchState(stores))
            assert len(out.packets["pass"]) == BATCH, enc.counters
        return n * BATCH

    result = {"encrypt": best_rate(encrypt, seconds)}
    sealed: list[bytes] = []  # fresh sequence numbers: enough for decrypt's runs
    for i in range(2 * round(result["encrypt"]["pps"] * seconds / BATCH) + 4):
        out = enc.handle(plain[i % len(plain)], BatchState(stores)).packets["pass"]
        sealed += [out.packet(j) for j in range(len(out))]
    esp, dec = batches(sealed), engine(cipher, False)

    def decrypt(n: int) -> int:
        inbound = BatchState.memory(Ipsec.tables)  # a fresh window: nothing is a replay
        for b in esp[:n]:
            out = dec.handle(b, BatchState(inbound))
            assert len(out.packets.get("pass", ())) == len(b), dec.counters
        return sum(map(len, esp[:n]))

    result["decrypt"] = best_rate(decrypt, seconds)
    result["round_trip_exact"] = dec_check(dec, esp[0], plain[0])
    return result


def dec_check(dec: FunctionEngine, esp: PacketBatch, plain: PacketBatch) -> bool:
    out = dec.handle(esp, BatchState(BatchState.memory(Ipsec.tables))).packets["pass"]
    return all(out.packet(j) == plain.packet(j) for j in range(len(plain)))


def raw_rates(cipher: str, size: int, seconds: float) -> dict[str, Any]:
    """EspTransform.seal / open alone, one packet per call (seq 1, 2, ...)."""
    esp = EspTransform(cipher, key(cipher), SPI)
    inner = ip_packet(size, 0, 0)
    sealed = [esp.seal(seq, 4, inner) for seq in range(1, 4097)]
    state = {"seq": 1}

    def seal(n: int) -> int:
        seq = state["seq"]
        for s in range(seq, seq + n):
            esp.seal(s, 4, inner)
        state["seq"] = seq + n
        return n

    def open_(n: int) -> int:
        for i in range(n):
            esp.open(sealed[i & 4095], (i & 4095) + 1)
        return n

    return {"seal": best_rate(seal, seconds), "open": best_rate(open_, seconds)}


def openssl(size: int, *algo: str) -> float:
    """bytes/s of `openssl speed` at one buffer size (wall clock, 1 s)."""
    cmd = ["openssl", "speed", "-mr", "-elapsed", "-seconds", "1", "-bytes", str(size), *algo]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("+F")]
    return float(lines[-1].rsplit(":", 1)[1])


def _runs() -> dict[str, tuple[str, ...]]:
    """The `openssl speed` runs of one size, by name."""
    runs: dict[str, tuple[str, ...]] = {"hmac": ("-hmac", "sha256")}
    for bits in (128, 256):
        for mode in ("gcm", "cbc"):
            evp = ("-evp", f"aes-{bits}-{mode}")
            runs[f"{mode}{bits}"], runs[f"{mode}{bits}_dec"] = evp, ("-decrypt", *evp)
        runs[f"gcm{bits}_aead"] = ("-aead", "-evp", f"aes-{bits}-gcm")
    return runs


def ceilings(progress: Progress) -> dict[str, Any]:
    """Per cipher and size: OpenSSL's bytes/s and packets/s, encrypt and decrypt."""
    runs = _runs()
    task = progress.add_task("openssl speed", total=len(SIZES) * len(runs))
    out: dict[str, Any] = {}
    for size in SIZES:
        got: dict[str, float] = {}
        for name, algo in runs.items():
            got[name] = openssl(size, *algo)
            progress.advance(task)
        for cipher in CIPHERS:
            bits = "128" if "128" in cipher else "256"
            if cipher.startswith("aes-gcm"):
                enc, dec = got[f"gcm{bits}"], got[f"gcm{bits}_dec"]
                cell = {"aead_bytes_per_s": round(got[f"gcm{bits}_aead"])}
                cell["aead_pps"] = round(got[f"gcm{bits}_aead"] / size)
            else:  # CBC, then HMAC over the same bytes
                enc = 1 / (1 / got[f"cbc{bits}"] + 1 / got["hmac"])
                dec = 1 / (1 / got[f"cbc{bits}_dec"] + 1 / got["hmac"])
                cell = {"cbc_bytes_per_s": round(got[f"cbc{bits}"])}
                cell["hmac_bytes_per_s"] = round(got["hmac"])
            cell |= {"encrypt_bytes_per_s": round(enc), "decrypt_bytes_per_s": round(dec)}
            cell |= {"encrypt_pps": round(enc / size), "decrypt_pps": round(dec / size)}
            out.setdefault(cipher, {})[str(size)] = cell
    return out


def measure_core(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    task = progress.add_task("core and raw ESP", total=len(CIPHERS) * len(SIZES))
    out: dict[str, Any] = {}
    for cipher in CIPHERS:
        for size in SIZES:
            tries = []
            for _ in range(max(args.tries, 1)):
                with LoadWatch() as watch:
                    cell = {"core": core_rates(cipher, size, args.seconds)}
                    cell["raw"] = raw_rates(cipher, size, args.seconds)
                cell["disturbance"] = watch.report()
                tries.append(cell)
                if cell["disturbance"]["others_share"] <= args.max_disturbance:
                    break
            cell = min(tries, key=lambda c: c["disturbance"]["others_share"])
            out.setdefault(cipher, {})[str(size)] = cell
            progress.advance(task)
    return out


def add_ratios(core: dict[str, Any], ceiling: dict[str, Any]) -> None:
    for cipher, by_size in core.items():
        for size, cell in by_size.items():
            top = ceiling[cipher][size]
            c, r = cell["core"], cell["raw"]
            cell["ratio"] = {
                "encrypt": round(c["encrypt"]["pps"] / top["encrypt_pps"], 3),
                "decrypt": round(c["decrypt"]["pps"] / top["decrypt_pps"], 3),
                "seal": round(r["seal"]["pps"] / top["encrypt_pps"], 3),
                "open": round(r["open"]["pps"] / top["decrypt_pps"], 3),
                "core_to_raw_encrypt": round(c["encrypt"]["pps"] / r["seal"]["pps"], 3),
                "core_to_raw_decrypt": round(c["decrypt"]["pps"] / r["open"]["pps"], 3),
            }
            if "aead_pps" in top:
                cell["ratio"]["encrypt_to_aead"] = round(c["encrypt"]["pps"] / top["aead_pps"], 3)


def show(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="ipsec core vs openssl speed (packets/s, ratio to the ceiling)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "cipher" else "right")
    for cipher, by_size in report["core"].items():
        for size, cell in by_size.items():
            c, r, q = cell["core"], cell["raw"], cell["ratio"]
            top = report["openssl"][cipher][size]
            table.add_row(
                cipher, size, f"{c['encrypt']['pps']:,}", f"{q['encrypt']:.3f}",
                f"{c['decrypt']['pps']:,}", f"{q['decrypt']:.3f}", f"{r['seal']['pps']:,}",
                f"{r['open']['pps']:,}", f"{top['encrypt_pps']:,}",
            )  # fmt: skip
    console.print(table)
    if report.get("kafka"):
        console.print(kafka_table(report["kafka"]))
        if "error" in report["kafka"]:
            console.print(f"[red]kafka:[/] {report['kafka']['error']}", highlight=False)


def kafka_table(kafka: dict[str, Any]) -> Table:
    """Per cipher and size: Kafka packets/s and its ratio to the ceiling, both ways."""
    table = Table(title="ipsec over Kafka vs the one-hop ceiling (packets/s, ratio)")
    for col in KAFKA_COLUMNS:
        table.add_column(col, justify="left" if col == "cipher" else "right")
    for cipher, by_size in kafka.get("runs", {}).items():
        for size, cell in by_size.items():
            row = [cipher, size]
            for function in ("encrypt", "decrypt"):
                run = cell.get(function, {"error": "not run"})
                if "error" in run:
                    row += ["[red]error[/]", ""]
                else:
                    row += [f"{run['kafka']['pps']:,}", f"{run['ratio_to_ceiling']:.3f}"]
            table.add_row(*row)
    return table


def names(text: str, known: tuple[Any, ...]) -> list[Any]:
    """The comma list `text` of `known`'s members (as their type), checked."""
    kind = type(known[0])
    try:
        got = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    unknown = [item for item in got if item not in known]
    if unknown or not got:
        raise argparse.ArgumentTypeError(f"one or more of {', '.join(map(str, known))}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.4, help="per timed run of a figure")
    ap.add_argument("--packets", type=int, default=30_000, help="of each Kafka capture")
    ap.add_argument(
        "--kafka-ciphers",
        type=partial(names, known=CIPHERS),
        default=list(CIPHERS),
        help="comma list (default all) for the Kafka matrix",
    )
    ap.add_argument(
        "--kafka-sizes",
        type=partial(names, known=SIZES),
        default=list(SIZES),
        help="comma list of IP packet bytes (default all) for the Kafka matrix",
    )
    ap.add_argument("--skip-kafka", action="store_true")
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--tries", type=int, default=2, help="runs of a disturbed figure at most")
    ap.add_argument("--max-disturbance", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ipsec.json")
    args = ap.parse_args()
    console = Console(stderr=True, width=120)
    started, code = time.perf_counter(), code_state()
    report: dict[str, Any] = {
        "benchmark": "ipsec: core and raw ESP vs openssl speed; "
        "encrypt and decrypt over Kafka vs the ceiling",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "openssl_cli": subprocess.run(
                ["openssl", "version"], capture_output=True, text=True
            ).stdout.strip(),
            "openssl_cryptography": _crypto_openssl(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "code": code,
        "batch_packets": BATCH,
        "sizes": list(SIZES),
        "seconds_per_run": args.seconds,
    }
    with Progress(console=console, transient=True) as progress:
        report["openssl"] = ceilings(progress)
        report["core"] = measure_core(args, progress)
    add_ratios(report["core"], report["openssl"])
    if not args.skip_kafka:
        from ipsec_kafka import measure_kafka  # Kafka clients only when asked

        ciphers, sizes = args.kafka_ciphers, args.kafka_sizes
        report["kafka"] = measure_kafka(args, console, frames, key, ciphers, sizes)
    write_report(report, code, started, args.out)
    show(console, report)
    console.print(f"wrote {args.out}")


def _crypto_openssl() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


if __name__ == "__main__":
    sys.exit(main())
