"""Function types from other packages, through the `snf.functions` entry point.

tests/data/plugin is a tiny third-party distribution (snf_plugin_demo with its
.dist-info); putting it on PYTHONPATH installs it as far as importlib.metadata
is concerned. Everything runs in subprocesses, so this process's registry
never sees it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dpkt
from jsonschema import Draft202012Validator

from snf.core.registry import available

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "data" / "plugin"
CAPTURE = "zeek-wikipedia.pcap"  # UDP (DNS, NetBIOS, mDNS) over v4 and v6, TCP, non-IP

TAGGER = """\
name: tagdemo
partitions: 2
functions:
  - name: tag
    function: tagger
    config: {drop_udp: %s}
"""


def snf(*args: str, cwd: Path, plugin: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if plugin:
        env["PYTHONPATH"] = str(PLUGIN)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def write(tmp_path: Path, drop_udp: str = "true") -> Path:
    path = tmp_path / "tagdemo.yaml"
    path.write_text(TAGGER % drop_udp)
    return path


def is_udp(frame: bytes) -> bool:
    ip = dpkt.ethernet.Ethernet(frame).data  # 802.1Q tags are looked through
    return isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) and ip.p == 17


def test_plugin_is_not_installed_here() -> None:
    assert "tagger" not in available()


def test_validate_finds_the_plugin_type(tmp_path: Path) -> None:
    path = write(tmp_path)
    done = snf("-m", "snf", "validate", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tag(tagger)" in done.stderr
    assert "drop -> port (snf.tagdemo.tag.drop)" in done.stderr


def test_without_the_plugin_the_type_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path)
    done = snf("-m", "snf", "validate", str(path), cwd=tmp_path, plugin=False)
    assert done.returncode == 2
    assert f"{path}:5: functions[0].function: unknown function type 'tagger'" in done.stderr


def test_plugin_config_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, drop_udp="sometimes")
    done = snf("-m", "snf", "validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{path}:6: functions[0].config.drop_udp:" in done.stderr


def test_run_local_drops_udp(tmp_path: Path, traffic: Callable[[str], Path]) -> None:
    capture = traffic(CAPTURE)
    with capture.open("rb") as f:
        frames = [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]
    udp = sum(map(is_udp, frames))
    assert 0 < udp < len(frames)

    path, out, summary = write(tmp_path), tmp_path / "out.pcapng", tmp_path / "out.json"
    args = ("-m", "snf", "run", str(path), str(capture), "--local", "-o", str(out))
    done = snf(*args, "--json", str(summary), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    result = json.loads(summary.read_text())
    assert result["packets"] == len(frames)
    assert result["functions"]["tag"]["drop"] == {"udp": udp}
    assert result["egress"] == len(frames) - udp
    with out.open("rb") as f:
        passed = [bytes(buf) for _, buf in dpkt.pcapng.Reader(f)]
    assert len(passed) == len(frames) - udp
    assert not any(map(is_udp, passed))


def test_schema_includes_the_plugin_type(tmp_path: Path) -> None:
    code = (
        "import json; from snf.pipeline.schema import pipeline_schema; "
        "print(json.dumps(pipeline_schema()))"
    )
    done = snf("-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert "tagger" in schema["$defs"]["FunctionSpec"]["properties"]["function"]["enum"]
    assert schema["$defs"]["taggerConfig"]["properties"]["drop_udp"]["type"] == "boolean"

    validator = Draft202012Validator(schema)
    spec = {"name": "p", "functions": [{"name": "tag", "function": "tagger"}]}
    assert list(validator.iter_errors(spec)) == []
    spec["functions"][0]["config"] = {"drop_udp": "sometimes"}
    paths = [list(e.absolute_path) for e in validator.iter_errors(spec)]
    assert paths == [["functions", 0, "config", "drop_udp"]]


def test_the_documented_plugin_is_this_one() -> None:
    doc = (ROOT / "docs" / "PIPELINE-FILE.md").read_text(encoding="utf-8")
    source = (PLUGIN / "snf_plugin_demo" / "__init__.py").read_text(encoding="utf-8")
    code = re.search(r"```python\n(class TaggerConfig.*?)```", doc, re.S)
    assert code is not None and code.group(1) in source
    assert TAGGER % "true" in doc
    entry = (PLUGIN / "snf_plugin_demo-0.1.dist-info" / "entry_points.txt").read_text()
    assert entry in doc
