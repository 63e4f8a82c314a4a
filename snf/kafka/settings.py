"""Settings every Kafka-facing part of snf reads from the environment.

SNF_HOME      where snf keeps jars, clusters, deployments and replay
              checkpoints (default ~/.cache/snf)
SNF_BROKERS   the bootstrap servers to use when --brokers is not given
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["brokers_from_env", "snf_home"]


def snf_home() -> Path:
    return Path(os.environ.get("SNF_HOME") or Path.home() / ".cache" / "snf")


def brokers_from_env() -> str | None:
    return os.environ.get("SNF_BROKERS") or None
