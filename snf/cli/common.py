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
        default=default_top,
        help="replay as fast as possible" + (" (default)" if default_top else ""),
    )
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
    g.add_argument("-l", "--loop", type=int, default=1, help="replay the captures N times")
    g.add_argument("-L", "--limit", type=int, default=None, help="stop after N packets")
    g.add_argument("--batch", type=int, default=512, help="max packets per Kafka message")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def replay_options(args: argparse.Namespace) -> ReplayOptions:
    """The replay timing flags (add_timing) as ReplayOptions."""
    from snf.ingress.replay import ReplayOptions  # late: keeps `snf --help` fast

    speed = args.speed
    if speed is None and args.pps is None and not args.topspeed:
        speed = 1.0
    if args.loop < 1:
        raise ConfigError("--loop must be at least 1")
    if args.pps is not None and args.pps <= 0:
        raise ConfigError("--pps must be greater than 0")
    if speed is not None and speed <= 0:
        raise ConfigError("--speed must be greater than 0")
    return ReplayOptions(
        speed=speed,
        pps=args.pps,
        loop=args.loop,
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
