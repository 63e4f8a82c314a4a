"""What the `snf` commands share: the console, common flags, pipeline lookup, brokers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from snf.errors import ConfigError, SnfError

if TYPE_CHECKING:
    from snf.ingress.replay import ReplayOptions
    from snf.pipeline.model import Pipeline

__all__ = [
    "add_brokers",
    "add_kafka_config",
    "add_timing",
    "apply_kafka_config",
    "console",
    "keyed_pipeline",
    "pipeline_file",
    "replay_options",
    "require_brokers",
]

console = Console(stderr=True, soft_wrap=True)


def add_brokers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--brokers",
        default=None,
        help="bootstrap servers host:port[,...] (default: $SNF_BROKERS, "
        "else the cluster started by `snf kafka up`)",
    )


def add_kafka_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kafka-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="Kafka client security settings (security.protocol, sasl.*, ssl.*) as "
        "properties or YAML; default $SNF_KAFKA_CONFIG. Any key can be overridden by "
        "SNF_KAFKA_<KEY> (e.g. SNF_KAFKA_SASL_PASSWORD). See docs/DEPLOY.md",
    )


def apply_kafka_config(args: argparse.Namespace) -> None:
    """Validate the Kafka client settings before anything starts, and make them this
    process's and its children's (workers, supervisors) through the environment."""
    if args.kafka_config is None and not any(k.startswith("SNF_KAFKA_") for k in os.environ):
        return  # plaintext; and `snf --help`-fast: no pydantic import
    from snf.kafka.security import use_config

    use_config(args.kafka_config)


def add_timing(p: argparse.ArgumentParser, default_top: bool) -> None:
    g = p.add_argument_group("replay timing (as tcpreplay)")
    g.add_argument(
        "-t",
        "--topspeed",
        action="store_true",
        default=None,  # None: not given (-M refuses only an explicit -t)
        help="replay as fast as possible" + (" (default)" if default_top else ""),
    )
    p.set_defaults(default_topspeed=default_top)
    g.add_argument(
        "-x",
        "--speed",
        "--multiplier",
        type=float,
        default=None,
        dest="speed",
        help="captured timing times this multiplier (1.0 = as captured)",
    )
    g.add_argument("-p", "--pps", type=float, default=None, help="fixed packets per second")
    g.add_argument(
        "-M",
        "--mbps",
        type=float,
        default=None,
        help="fixed megabits per second of the packets' wire (original) lengths; not with -x/-p/-t",
    )
    g.add_argument("-l", "--loop", type=int, default=1, help="replay the captures N times")
    g.add_argument(
        "--loopdelay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="pause this many milliseconds between loop iterations",
    )
    g.add_argument(
        "--unique-ip",
        action="store_true",
        help="with --loop: loop k (from 0) shifts IPv4 addresses and the last 32 bits of "
        "IPv6 ones by k, so every loop's flows are new; checksums stay valid",
    )
    g.add_argument("-L", "--limit", type=int, default=None, help="stop after N packets")
    g.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop sending after this many seconds",
    )
    g.add_argument(
        "-K",
        "--preload-pcap",
        action="store_true",
        help="read the captures into memory before sending, so disk reads never delay it",
    )
    g.add_argument("--batch", type=int, default=512, help="max packets per Kafka message")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def replay_options(args: argparse.Namespace) -> ReplayOptions:
    """The replay timing flags (add_timing) as ReplayOptions; ConfigError on bad ones."""
    from snf.ingress.replay import ReplayOptions  # late: keeps `snf --help` fast

    explicit_top = bool(args.topspeed)
    top = explicit_top if args.topspeed is not None else getattr(args, "default_topspeed", False)
    mbps = args.mbps
    if mbps is not None and (args.speed is not None or args.pps is not None or explicit_top):
        raise ConfigError("-M/--mbps cannot be combined with -x/--speed, -p/--pps or -t/--topspeed")
    speed = args.speed
    if speed is None and args.pps is None and mbps is None and not top:
        speed = 1.0
    if args.loop < 1:
        raise ConfigError("--loop must be at least 1")
    for name, value in (("--pps", args.pps), ("--speed", speed), ("--mbps", mbps)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be greater than 0")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be greater than 0")
    if args.loopdelay_ms < 0:
        raise ConfigError("--loopdelay-ms must not be negative")
    if args.unique_ip and args.loop < 2:
        raise ConfigError("--unique-ip changes addresses from the second loop on: add --loop N")
    return ReplayOptions(
        speed=speed,
        pps=args.pps,
        mbps=mbps,
        loop=args.loop,
        unique_ip=args.unique_ip,
        duration=args.duration,
        loopdelay_ms=args.loopdelay_ms,
        preload=args.preload_pcap,
        limit=args.limit,
        max_packets=args.batch,
        progress=not args.no_progress,
    )


def pipeline_file(ref: str) -> Path:
    """A file, a deployed pipeline's name, or the name of a file in ./pipelines/."""
    from snf.ops import deployment_dir as dp  # late: keeps `snf --help` fast

    path = Path(ref)
    if path.exists():
        return path
    deployed = dp.directory(ref) / "pipeline.yaml"
    if deployed.exists():
        return deployed
    candidate = Path("pipelines") / f"{ref}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        f"no pipeline file {ref!r}, no deployment of that name, nor pipelines/{ref}.yaml"
    )


def require_brokers(
    explicit: str | None, hint: str = "run `snf kafka up`, or pass --brokers"
) -> str:
    """--brokers, else $SNF_BROKERS, else the cluster `snf kafka up` started."""
    from snf.kafka import cluster

    brokers = cluster.resolve_brokers(explicit)
    if brokers is None:
        raise SnfError(f"no Kafka cluster configured: {hint}")
    return brokers


def keyed_pipeline(ref: str) -> Pipeline:
    """The pipeline of `ref` (as pipeline_file finds it), with its deployment's
    control key in the environment unless SNF_CONTROL_KEY is set: the capture
    agent signs with it and the sink trusts only what it signs
    (snf.guarantee.control_auth)."""
    from snf.guarantee.control_auth import CONTROL_KEY_ENV
    from snf.ops import deployment_dir as dp
    from snf.pipeline.loader import load_pipeline

    pipeline = load_pipeline(pipeline_file(ref))
    key = os.environ.get(CONTROL_KEY_ENV) or dp.control_key(dp.directory(pipeline.name))
    if key:
        os.environ[CONTROL_KEY_ENV] = key
    return pipeline
