"""The `snf` command line: one parser, the commands of run_commands and deploy_commands.

Commands import what they need when they run, so `snf --help` and a mistyped
flag answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from snf.cli import (
    capture_command,
    deploy_commands,
    dlq_command,
    lab_command,
    run_commands,
    sink_command,
    top_command,
)
from snf.cli.common import add_kafka_config, apply_kafka_config, console
from snf.errors import ConfigError, SnfError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snf", description="Network functions as stream functions on Apache Kafka."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    add_kafka_config(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    run_commands.add_parsers(sub)
    deploy_commands.add_parsers(sub)
    top_command.add_parsers(sub)
    dlq_command.add_parsers(sub)
    sink_command.add_parsers(sub)
    capture_command.add_parsers(sub)
    lab_command.add_parsers(sub)
    return parser


COMMANDS = {
    **run_commands.COMMANDS,
    **deploy_commands.COMMANDS,
    **top_command.COMMANDS,
    **dlq_command.COMMANDS,
    **sink_command.COMMANDS,
    **capture_command.COMMANDS,
    **lab_command.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        apply_kafka_config(args)
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # unwrapped: file:line: path must stay greppable
        return 2
    except SnfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
