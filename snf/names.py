"""Every Kafka name snf uses, derived from pipeline and function names.

One pattern, documented in docs/ARCHITECTURE.md:

    snf.<pipeline>.ingress                 capture agent -> first function
    snf.<pipeline>.<function>.<port>       a function's output port
    snf.<pipeline>.egress                  the last function's `pass` port
    snf.<pipeline>.<function>              consumer group and Faust app id
    snf.<pipeline>.<function>-<table>-changelog   (named by Faust from the app id)

Pipeline and function names are lowercase [a-z0-9-] so a derived name never
mixes '.' and '_' (Kafka warns that they collide in metric names).
"""

from __future__ import annotations

import re

__all__ = [
    "NAME_PATTERN",
    "changelog_topic",
    "egress_topic",
    "group_id",
    "ingress_topic",
    "port_topic",
]

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,47}$"
_NAME = re.compile(NAME_PATTERN)
PREFIX = "snf"


def _check(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must match {NAME_PATTERN}")
    return name


def ingress_topic(pipeline: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.ingress"


def egress_topic(pipeline: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.egress"


def port_topic(pipeline: str, function: str, port: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.{_check('function', function)}.{port}"


def group_id(pipeline: str, function: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.{_check('function', function)}"


def changelog_topic(pipeline: str, function: str, table: str) -> str:
    # Faust names changelogs "<app id>-<table>-changelog"; this mirrors it.
    return f"{group_id(pipeline, function)}-{table}-changelog"


def leader_topic(pipeline: str, function: str) -> str:
    # Faust's assignor creates "<app id>-__assignor-__leader"; deleted with the pipeline.
    return f"{group_id(pipeline, function)}-__assignor-__leader"
