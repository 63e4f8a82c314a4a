"""kill -9 of an ipsec worker, twice, mid-stream, on the real broker: the encrypting
gateway (its sequence numbers) and the decrypting one (its replay windows).

Gateway A (`encrypt`, ipsec outbound) seals site A's traffic into two SAs;
gateway B (`decrypt`, ipsec inbound, snf too) opens it. `snf chaos` kills
A's worker at 30% and at 65% of the replay. Then:

- the verdict is clean: B's output (the inner packets) equals --local's,
  nothing lost, doubled or reordered; B's replay window would have dropped a
  packet whose number came back, and the verdict would show it lost;
- every ESP packet A ever sent, a redo's copies included (read from the topic
  between the two, where they stay), has an (SPI, sequence number) of its
  own, and per SA the numbers only go up: a takeover is a gap, never a step
  back (snf.harness.esp_audit).

The decrypting gateway's case (tests.ipsec_chaos.write_replay_case): peer A's
ESP as it reaches B, with replayed copies (inside the 1024-packet window and
older) and originals sent late, many of them across B's kills. The verdict is
clean (every packet on the port and with the reason --local gives), and the
counts are the capture's own: every original out once, late ones included,
every copy dropped. A successor that forgot the window would pass copies; one
that restored it without undoing the redone batch would drop originals.

The long variants (ten kills and more) are bench/ipsec_chaos.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snf.cli.main import main
from snf.harness.esp_audit import audit_topic
from snf.kafka.admin import delete_topics, topic_partitions
from tests.ipsec_chaos import BLOCK, NAME, REPLAY_NAME, write_case, write_replay_case

pytestmark = pytest.mark.integration


def test_killing_the_encrypting_worker_never_repeats_a_sequence_number(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, capture, packets = write_case(tmp_path, packets=6000)
    report_file = tmp_path / "chaos.json"
    argv = ["chaos", str(pipeline), str(capture)]
    argv += ["--kill", "encrypt", "--at", "30%", "--kill", "encrypt", "--at", "65%"]
    argv += ["-p", "1500", "--seed", "3", "--keep", "--rundir", str(tmp_path / "run")]
    argv += ["--brokers", kafka_bootstrap, "--json", str(report_file), "--no-progress"]
    before = set(topic_partitions(kafka_bootstrap))
    try:
        code = main(argv)
        report = json.loads(report_file.read_text())
        topics = sorted(set(topic_partitions(kafka_bootstrap)) - before)
        wire = [t for t in topics if t.startswith(f"snf.{NAME}-r") and t.endswith(".decrypt.in")]
        assert len(wire) == 1, topics
        audit = audit_topic(kafka_bootstrap, wire[0])
    finally:
        delete_topics(
            kafka_bootstrap,
            [t for t in set(topic_partitions(kafka_bootstrap)) - before if NAME in t],
        )
    capsys.readouterr()

    fired = [f for f in report["faults"] if f["observed"] == "killed"]
    assert len(fired) == 2, report["faults"]
    assert all(0 < f["sent"] < packets for f in fired)  # mid-stream, both
    assert report["restarts"]["encrypt"] >= 2
    assert code == 0 and report["verdict"]["clean"], report["verdict"]["totals"]
    assert report["verdict"]["terminals"]["egress"]["output"] == packets

    assert audit.repeats == 0 and audit.steps_back == 0, audit.to_json()
    assert audit.packets >= packets  # a redo's copies come on top
    assert set(audit.per_spi) == {0x2001, 0x2002}
    # A takeover skips the rest of a block, plus the numbers the killed worker took
    # for packets still in flight (never acknowledged): a few batches at this rate.
    assert audit.gaps and max(audit.gaps) <= BLOCK + 512


def test_killing_the_decrypting_worker_never_accepts_a_replay(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = write_replay_case(tmp_path, packets=6000)
    report_file = tmp_path / "chaos.json"
    argv = ["chaos", str(case.pipeline), str(case.capture)]
    argv += ["--kill", "decrypt", "--at", "30%", "--kill", "decrypt", "--at", "65%"]
    argv += ["-p", "1500", "--seed", "5", "--rundir", str(tmp_path / "run")]
    argv += ["--brokers", kafka_bootstrap, "--json", str(report_file), "--no-progress"]
    before = set(topic_partitions(kafka_bootstrap))
    try:
        code = main(argv)
    finally:
        mine = [t for t in set(topic_partitions(kafka_bootstrap)) - before if REPLAY_NAME in t]
        delete_topics(kafka_bootstrap, mine)
    capsys.readouterr()
    report = json.loads(report_file.read_text())

    fired = [f for f in report["faults"] if f["observed"] == "killed"]
    assert len(fired) == 2, report["faults"]
    assert all(0 < f["sent"] < case.frames for f in fired)
    assert report["restarts"]["decrypt"] >= 2
    assert code == 0 and report["verdict"]["clean"], report["verdict"]["totals"]
    terminals = report["verdict"]["terminals"]
    assert case.replays > 100 and case.late > 50  # the capture holds what is tested
    assert terminals["egress"]["reference"] == terminals["egress"]["output"] == case.originals
    assert terminals["decrypt.drop"]["output"] == case.replays
