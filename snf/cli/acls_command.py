"""`snf kafka acls PIPELINE`: a pipeline's ACLs on a secured cluster, so that only the
capture agent's user writes its ingress (snf.kafka.acls; docs/DEPLOY.md, "ACLs")."""

from __future__ import annotations

import argparse
from pathlib import Path

from snf.cli.common import add_brokers, console, pipeline_file
from snf.errors import ConfigError, SnfError

__all__ = ["add_parser", "run"]


def add_parser(ksub: argparse._SubParsersAction) -> None:
    p = ksub.add_parser(
        "acls",
        help="create a pipeline's ACLs: only --capture may write its ingress",
        description="Without --brokers or $SNF_BROKERS: on the local cluster --name, as its "
        "`admin`. Else on --brokers, as the user of --kafka-config (it needs Alter on the "
        "cluster).",
    )
    p.add_argument("pipeline", help="a pipeline file, or a pipeline's name")
    p.add_argument("--worker", default="snf", help="the workers' user (default: snf)")
    p.add_argument("--capture", default="capture", help="the capture agent's (default: capture)")
    p.add_argument("--name", default="default", help="the local cluster (default: default)")
    add_brokers(p)


def _pipeline_name(ref: str) -> str:
    """A file's (or deployment's) pipeline name, else `ref` itself if it is a valid name."""
    from snf.pipeline import names
    from snf.pipeline.loader import load_pipeline

    if Path(ref).suffix in (".yaml", ".yml") or Path(ref).exists():
        return load_pipeline(pipeline_file(ref)).name
    try:
        names.ingress_topic(ref)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ref


def run(args: argparse.Namespace) -> int:
    from snf.kafka import acls, cluster, secure_cluster
    from snf.kafka.kraft_config import ADMIN_USER
    from snf.kafka.security import KafkaSecurity, load
    from snf.kafka.settings import brokers_from_env
    from snf.pipeline import names

    name = _pipeline_name(args.pipeline)
    wanted = acls.pipeline_acls(
        names.ingress_topic(name), names.pipeline_prefix(name), args.worker, args.capture
    )
    security: KafkaSecurity | None = None  # the process's: --kafka-config
    bootstrap = args.brokers or brokers_from_env()
    if not bootstrap:
        info = cluster.recorded(args.name)
        if info is None or not info.client_config:
            raise SnfError(
                f"no secure local cluster {args.name!r}: start one with"
                f" `snf kafka up --secure --name {args.name}`, or pass --brokers"
            )
        bootstrap = info.bootstrap
        security = load(secure_cluster.user_config(info, ADMIN_USER))
    acls.apply_acls(bootstrap, wanted, security)
    console.print(f"{len(wanted)} ACLs of pipeline {name!r} in force at {bootstrap}:")
    for acl in wanted:
        print(acls.describe(acl))
    return 0
