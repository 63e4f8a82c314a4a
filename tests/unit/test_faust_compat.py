"""The worker's private uses of Faust and aiokafka still find what they use (no broker).

snf.runtime.worker.faust_compat was written against pinned versions. These tests
fail as soon as an upgrade removes or renames anything it touches, instead of
a worker failing mid-takeover.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from aiokafka.consumer.consumer import AIOKafkaConsumer
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.transport.producer import Producer

from snf.runtime.worker import faust_compat
from snf.runtime.worker.faust_compat import FaustCompatError


def test_the_installed_versions_are_the_pinned_ones() -> None:
    faust_compat.check_versions()  # raises otherwise


def test_other_versions_are_refused_with_what_to_do() -> None:
    with pytest.raises(FaustCompatError) as exc:
        faust_compat.check_versions({"faust-streaming": "0.16.0", "aiokafka": "0.14.0"})
    message = str(exc.value)
    assert "faust-streaming 0.16.0 (expected 0.15.3)" in message
    assert "faust_compat.py" in message and "aiokafka 0.14.0" not in message.split(";")[1]


@pytest.mark.parametrize(
    ("owner", "names"),
    [
        (AIOKafkaConsumerThread, ["_create_worker_consumer", "_ensure_consumer"]),
        (Store, ["_db_for_partition", "_visible_items", "_decode_key", "_decode_value"]),
        (Consumer, ["_commit", "_commit_offsets", "assignment", "stop_flow"]),
    ],
)
def test_the_private_methods_used_exist(owner: type, names: list[str]) -> None:
    assert all(hasattr(owner, n) for n in names), [n for n in names if not hasattr(owner, n)]


@pytest.mark.parametrize(
    ("cls", "attribute"),
    [
        (Consumer, "self._committed_offset"),
        (Producer, "self.buffer"),
        (AIOKafkaConsumer, "self._fetch_max_wait_ms"),
        (AIOKafkaConsumer, "self._coordinator"),
        (AIOKafkaDriverConsumer, "self._thread"),
    ],
)
def test_the_private_attributes_used_are_still_set(cls: type, attribute: str) -> None:
    assert attribute in inspect.getsource(cls)


def test_a_missing_attribute_is_named_in_the_error() -> None:
    with pytest.raises(FaustCompatError, match=r"SimpleNamespace\._committed_offset is gone"):
        faust_compat.committed_offset(SimpleNamespace(), ("t", 0))


def test_standing_in_for_an_event_gives_tables_its_partition() -> None:
    tp = SimpleNamespace(topic="snf.p.f.in", partition=3)
    with faust_compat.standing_in_for_event(tp, 17):
        assert faust_compat.current_partition() == 3
    with pytest.raises(RuntimeError):
        faust_compat.current_partition()


def test_committed_offsets_only_move_forward() -> None:
    consumer = SimpleNamespace(_committed_offset={"a": 5, "b": None})
    faust_compat.record_committed(consumer, {"a": 3, "b": 2, "c": 1})
    assert consumer._committed_offset == {"a": 5, "b": 2, "c": 1}
