"""Hostile pipeline files: every bound is one error line, never a traceback or a hang."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snf.core.limits import MAX_FILE_BYTES, MAX_SECONDS
from snf.errors import ConfigError
from snf.pipeline.errors import MAX_DEPTH, PipelineError, Problem
from snf.pipeline.loader import load_pipeline, parse_pipeline

GOOD = "name: p\nfunctions:\n  - {name: f, function: flowmon}\n"


def problems(text: str) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, "pipe.yaml")
    return info.value.problems


def test_deep_nesting_is_refused_before_python_recursion_runs_out() -> None:
    for text in (
        "name: p\nfunctions: " + "[" * 20_000 + "]" * 20_000 + "\n",  # flow style
        "name: p\nfunctions:\n" + "".join("  " * i + "-\n" for i in range(1, 500)),  # block
        "name: p\nx: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n",
    ):
        (found,) = problems(text)
        assert found.file == "pipe.yaml" and found.path == ""
        assert found.message == f"invalid YAML: nested deeper than {MAX_DEPTH} levels (the limit)"


def test_nesting_up_to_the_limit_is_only_checked_by_the_schema() -> None:
    # The root mapping is level 1, `functions` level 2: 62 more lists reach the limit.
    deep = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    found = problems(f"name: p\nfunctions: {deep}\n")
    assert found and "nested deeper" not in found[0].message


def test_oversize_text_is_refused_unparsed() -> None:
    (found,) = problems(GOOD + "#" * MAX_FILE_BYTES)
    assert (found.file, found.line) == ("pipe.yaml", 1)
    assert "larger than 4194304 bytes" in found.message


def test_a_pipeline_file_is_a_small_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    assert load_pipeline(path).name == "p"
    path.write_text(GOOD + "#" * MAX_FILE_BYTES)
    with pytest.raises(ConfigError, match=r"p\.yaml: pipeline file is larger than 4194304"):
        load_pipeline(path)
    os.mkfifo(tmp_path / "fifo.yaml")  # opening it for reading must not wait for a writer
    with pytest.raises(ConfigError, match=r"fifo\.yaml: pipeline file must be a regular file"):
        load_pipeline(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match="regular file, not a device"):
        load_pipeline("/dev/zero")
    with pytest.raises(ConfigError, match="regular file, not a directory"):
        load_pipeline(tmp_path)
    path.write_bytes(b"name: p\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: pipeline file is not UTF-8 text \(line 2\)"):
        load_pipeline(path)


# -- durations: finite, above 0, at most MAX_SECONDS -------------------------------------

NAT = "{inside: [10.1.0.0/16], public_ips: [198.51.100.1], timeouts: {FIELD: VALUE}}"
LB = "{services: [{vip: '203.0.113.10:80', proto: tcp, backends: [{address: '10.2.0.1:80'}]}], "
DURATIONS = [
    ("firewall", "{timeouts: {FIELD: VALUE}}", ["tcp", "tcp_closing", "udp", "icmp", "other"]),
    ("nat", NAT, ["tcp", "tcp_transitory", "udp", "icmp"]),
    ("loadbalancer", LB + "timeouts: {FIELD: VALUE}}", ["tcp", "tcp_fin", "udp"]),
    ("flowmon", "{FIELD: VALUE}", ["idle_timeout", "active_timeout"]),
]


def with_duration(kind: str, config: str, field: str, value: str) -> str:
    config = config.replace("FIELD", field).replace("VALUE", value)
    return f"name: p\nfunctions:\n  - name: f\n    function: {kind}\n    config: {config}\n"


@pytest.mark.parametrize(("kind", "config", "fields"), DURATIONS, ids=[d[0] for d in DURATIONS])
def test_durations_are_finite_and_bounded(kind: str, config: str, fields: list[str]) -> None:
    nested = "timeouts" in config
    for field in fields:
        path = f"functions[0].config.{'timeouts.' if nested else ''}{field}"
        for value, expected in [
            (".inf", "input should be a finite number, got inf"),
            (".nan", "input should be a finite number, got nan"),
            ("1.0e+300", f"input should be less than or equal to {MAX_SECONDS}, got 1e+300"),
            ("1e300", f"input should be less than or equal to {MAX_SECONDS}, got '1e300'"),
            ("0", "input should be greater than 0, got 0"),
        ]:
            (found,) = problems(with_duration(kind, config, field, value))
            assert (found.file, found.line, found.path) == ("pipe.yaml", 5, path), found
            assert found.message == expected
        # The longest allowed runs: its nanoseconds fit the 64-bit packet clock.
        pipeline = parse_pipeline(with_duration(kind, config, field, str(MAX_SECONDS)))
        fn = pipeline.functions[0]
        fn.cls(fn.config)
        assert MAX_SECONDS * 10**9 * 2 < 2**63


def test_autoscale_cooldown_is_finite_and_bounded() -> None:
    text = GOOD.replace("flowmon}", "flowmon, instances: {max: 2, cooldown: VALUE}}")
    for value, expected in [
        (".inf", "input should be a finite number, got inf"),
        (".nan", "input should be a finite number, got nan"),
        ("1.0e+300", f"input should be less than or equal to {MAX_SECONDS}, got 1e+300"),
    ]:
        found = problems(text.replace("VALUE", value))
        # The field inside the union member (Autoscale), not just `instances`.
        assert Problem("pipe.yaml", 3, "functions[0].instances.cooldown", expected) in found
    assert parse_pipeline(text.replace("VALUE", "30")).spec.functions[0].instances.cooldown == 30
