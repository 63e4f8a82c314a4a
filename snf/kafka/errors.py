"""The exceptions of snf's Kafka layer, rooted in snf.errors.SnfError.

Named apart from kafka-python's own `kafka.errors.KafkaError`, which snf.kafka
catches and rewords: a caller sees where and how often snf tried.
"""

from __future__ import annotations

from snf.errors import SnfError

__all__ = ["BrokerError", "PublishError"]


class BrokerError(SnfError):
    """A broker cannot be fetched, started, reached or asked to do something."""


class PublishError(SnfError):
    """Messages could not be delivered."""
