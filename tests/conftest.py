"""Shared fixtures. Real captures come from ../shared/traffic/ next to the repository."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snf.guarantee.control_auth import CONTROL_KEY_ENV


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


@pytest.fixture(autouse=True)
def _control_key_of_this_test() -> Iterator[None]:
    """`snf deploy` puts its control key in the process environment (where its
    workers and an in-process replay find it): in tests, for that test only."""
    saved = os.environ.get(CONTROL_KEY_ENV)
    yield
    if saved is None:
        os.environ.pop(CONTROL_KEY_ENV, None)
    else:
        os.environ[CONTROL_KEY_ENV] = saved
