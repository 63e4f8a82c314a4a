"""The example pipelines on their bundled captures: Kafka == --local, byte for byte.

What the results must contain is checked broker-less in tests/unit/test_examples.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import dpkt
import pytest

from tests.integration.test_suite import run_both

pytestmark = pytest.mark.integration

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@pytest.mark.parametrize(
    ("name", "capture"), [("edge", "edge"), ("monitoring", "monitoring"), ("tap", "monitoring")]
)
def test_example_pipeline_kafka_equals_local(
    kafka_bootstrap: str, tmp_path: Path, name: str, capture: str
) -> None:
    path = PIPELINES / "captures" / f"{capture}.pcapng"
    result, files = run_both(PIPELINES / f"{name}.yaml", kafka_bootstrap, tmp_path, [path])
    assert result.replay.packets > 1000
    assert "flows.flows.jsonl" in files


def test_vpn_example_kafka_equals_local(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The site-to-site tunnel (ipsec decrypt -> firewall -> ipsec encrypt): sealed
    bytes, drop reasons and lifetime records the same over Kafka."""
    path = PIPELINES / "captures" / "vpn.pcapng"
    result, files = run_both(PIPELINES / "vpn.yaml", kafka_bootstrap, tmp_path, [path])
    assert result.replay.packets == 583
    out = dpkt.pcapng.Reader(io.BytesIO(files["out.pcapng"]))
    protos = [dpkt.ethernet.Ethernet(frame).data for _, frame in out]
    sealed = [ip for ip in protos if isinstance(ip, dpkt.ip.IP) and ip.p == 50]
    assert len(protos) == 570 and len(sealed) == 272  # docs/functions/ipsec.md, Example
