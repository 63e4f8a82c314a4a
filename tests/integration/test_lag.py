"""Consumer-group lag against the session broker: committed offsets, never-committed groups."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from snf.kafka import admin
from snf.kafka.errors import BrokerError
from snf.kafka.lag import LagProbe, group_lag

pytestmark = pytest.mark.integration

PARTITIONS = 3
PER_PARTITION = [7, 11, 5]  # uneven, so a swapped partition would show


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"test-lag-{uuid.uuid4().hex[:8]}"
    admin.ensure_topics(kafka_bootstrap, {name: PARTITIONS})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        for partition, count in enumerate(PER_PARTITION):
            for i in range(count):
                producer.send(name, f"m{i}".encode(), partition=partition)
        producer.flush(30)
    finally:
        producer.close()
    return name


def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
    finally:
        consumer.close()


def test_lag_counts_from_committed_offsets(kafka_bootstrap: str, topic: str) -> None:
    group = f"g-{topic}"
    # Partition 2 never committed: its lag counts from the log start.
    _commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 11})
    info = group_lag(kafka_bootstrap, group, topic)
    rows = {p.partition: p for p in info.partitions}
    assert sorted(rows) == [0, 1, 2]
    assert [rows[p].end for p in range(3)] == PER_PARTITION
    assert [rows[p].committed for p in range(3)] == [3, 11, None]
    assert [rows[p].lag for p in range(3)] == [4, 0, 5]
    assert info.lag == sum(PER_PARTITION) - 3 - 11
    assert info.end_total == sum(PER_PARTITION)


def test_unknown_group_lags_from_start(kafka_bootstrap: str, topic: str) -> None:
    info = group_lag(kafka_bootstrap, f"never-{topic}", topic)
    assert info.lag == sum(PER_PARTITION)
    assert all(p.committed is None and p.start == 0 for p in info.partitions)


def test_probe_follows_commits_and_new_input(kafka_bootstrap: str, topic: str) -> None:
    group = f"probe-{topic}"
    with LagProbe(kafka_bootstrap) as probe:
        assert probe.group_lag(group, topic).lag == sum(PER_PARTITION)
        _commit(kafka_bootstrap, group, {TopicPartition(topic, 1): 10})
        assert probe.group_lag(group, topic).lag == sum(PER_PARTITION) - 10
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        producer.send(topic, b"late", partition=1).get(30)
        producer.close()
        after = probe.group_lag(group, topic)
        assert after.lag == sum(PER_PARTITION) - 10 + 1
        assert after.end_total == sum(PER_PARTITION) + 1
        with pytest.raises(BrokerError):
            probe.group_lag(group, f"missing-{topic}")
        # An error does not break the probe for the next call.
        assert probe.group_lag(group, topic).lag == after.lag
