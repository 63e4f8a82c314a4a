"""Every Kafka name snf uses, derived from pipeline and function names.

One pattern, documented in docs/ARCHITECTURE.md:

    snf.<pipeline>.ingress                 capture agent -> the entry function
    snf.<pipeline>.<function>.in           input of every other function
    snf.<pipeline>.<function>.<port>       an output port wired to no function
    <input topic>.dlq                      a function's dead letters: input messages
                                           it could not process, with the reason
    snf.<pipeline>.egress                  the pipeline's output (`egress` links)
    snf.<pipeline>.<function>              consumer group and Faust app id
    snf.<pipeline>.<function>-state-changelog   all its state (Faust's name for the
                                           changelog of its one table, "state")

Pipeline and function names are lowercase [a-z0-9-] so a derived name never
mixes '.' and '_' (Kafka warns that they collide in metric names).
"""

from __future__ import annotations

import re

__all__ = [
    "NAME_PATTERN",
    "changelog_topic",
    "dlq_topic",
    "egress_topic",
    "group_id",
    "ingress_topic",
    "input_topic",
    "pipeline_prefix",
    "port_topic",
    "private_topic",
]

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,47}$"
_NAME = re.compile(NAME_PATTERN)
PREFIX = "snf"


def _check(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must match {NAME_PATTERN}")
    return name


def pipeline_prefix(pipeline: str) -> str:
    # Every topic, group and transactional id of the pipeline starts so (its ACLs'
    # prefix), and a one-shot run's `snf.<pipeline>-r<hex>.` ones do not.
    return f"{PREFIX}.{_check('pipeline', pipeline)}."


def ingress_topic(pipeline: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.ingress"


def egress_topic(pipeline: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.egress"


def input_topic(pipeline: str, function: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.{_check('function', function)}.in"


def private_topic(pipeline: str, external: str) -> str:
    # A one-shot run's stand-in for an external topic (topic:NAME), deleted with it.
    return f"{PREFIX}.{_check('pipeline', pipeline)}.topic.{external}"


def port_topic(pipeline: str, function: str, port: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.{_check('function', function)}.{port}"


def dlq_topic(input_topic: str) -> str:
    # Per function, after its input (Kafka Connect's errors.deadletterqueue is per connector).
    return f"{input_topic}.dlq"


def group_id(pipeline: str, function: str) -> str:
    return f"{PREFIX}.{_check('pipeline', pipeline)}.{_check('function', function)}"


def changelog_topic(pipeline: str, function: str, table: str) -> str:
    # Faust names changelogs "<app id>-<table>-changelog"; this mirrors it.
    return f"{group_id(pipeline, function)}-{table}-changelog"


def leader_topic(pipeline: str, function: str) -> str:
    # Faust's assignor creates "<app id>-__assignor-__leader"; deleted with the pipeline.
    return f"{group_id(pipeline, function)}-__assignor-__leader"
