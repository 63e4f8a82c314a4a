"""Shared fixtures. Real captures come from ../shared/traffic/ next to the repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def traffic_dir() -> Path:
    """The shared real captures: <repo>/../shared/traffic."""
    return Path(__file__).resolve().parents[2] / "shared" / "traffic"


@pytest.fixture(name="traffic_dir")
def traffic_dir_fixture() -> Path:
    path = traffic_dir()
    if not path.is_dir():
        pytest.skip(reason=f"real captures not found at {path}")
    return path


@pytest.fixture
def traffic(traffic_dir: Path) -> Callable[[str], Path]:
    """traffic("zeek-ipv6.pcap") -> path of that real capture (skips if it is missing)."""

    def find(name: str) -> Path:
        path = traffic_dir / name
        if not path.is_file():
            pytest.skip(reason=f"real capture {name} not found in {traffic_dir}")
        return path

    return find
