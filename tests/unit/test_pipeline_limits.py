"""Hostile pipeline files: every bound is one error line, never a traceback or a hang."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snf.core.limits import MAX_FILE_BYTES
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
