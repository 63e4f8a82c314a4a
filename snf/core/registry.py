"""Function registry: type name -> class.

Built-ins are listed here explicitly; other packages add theirs through the
`snf.functions` entry-point group (name = type, value = "module:Class").
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from snf.core.contract import NetworkFunction
from snf.errors import ConfigError

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "available", "get_function"]

ENTRY_POINT_GROUP = "snf.functions"

BUILTIN: dict[str, str] = {
    "firewall": "snf.functions.firewall:Firewall",
    "flowmon": "snf.functions.flowmon:FlowMonitor",
    "ids": "snf.functions.ids:Ids",
    "ipsec": "snf.functions.ipsec:Ipsec",
    "loadbalancer": "snf.functions.loadbalancer:LoadBalancer",
    "nat": "snf.functions.nat:Nat",
    "ratelimit": "snf.functions.ratelimit:RateLimit",
}


def _load(target: str) -> type[NetworkFunction]:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, NetworkFunction)):
        raise ConfigError(f"{target} is not a NetworkFunction subclass")
    return cls


def available() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN}


def get_function(kind: str) -> type[NetworkFunction]:
    targets = available()
    if kind not in targets:
        raise ConfigError(f"unknown function type {kind!r}; known: {', '.join(sorted(targets))}")
    return _load(targets[kind])
