"""The pipeline file's models: what a user writes, checked field by field.

Every model forbids unknown fields. Cross-field rules a field cannot check
alone (unique names, instances within partitions) are `spec_conflicts`; the
wiring graph and function configs are checked by snf.pipeline.loader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from snf.core.limits import Seconds
from snf.pipeline import names
from snf.pipeline.errors import Loc, dotted

__all__ = [
    "Autoscale",
    "EgressSpec",
    "FunctionSpec",
    "Guarantee",
    "LinkSpec",
    "PipelineSpec",
    "spec_conflicts",
]

Guarantee = Literal["at_least_once", "exactly_once"]


class Autoscale(BaseModel):
    """`instances: {min, max}`: scaled on consumer lag (snf deploy --autoscale, KEDA)."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=0, ge=0)  # 0: scale to zero when idle (the serverless shape)
    max: int = Field(ge=1)  # at most the function's partitions
    lag_threshold: int = Field(default=10, ge=1)  # messages of input lag per instance
    cooldown: Seconds = 60.0  # idle seconds before scaling to zero

    @model_validator(mode="after")
    def _ordered(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class FunctionSpec(BaseModel):
    """One function, as written in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=names.NAME_PATTERN)  # unique in the pipeline; part of topic names
    function: str  # registry type name, e.g. "firewall"
    instances: Annotated[int, Field(ge=1)] | Autoscale = 1  # consumers; at most partitions
    partitions: int | None = Field(default=None, ge=1, le=1024)  # of its input (pipeline's)
    replication: int | None = Field(default=None, ge=1, le=16)  # of its topics (pipeline's)
    standby_replicas: int = Field(default=0, ge=0, le=8)  # warm table copies on other workers
    # exactly_once: snf's journal and lineage dedup (docs/FAULT-TOLERANCE.md), not
    # Faust's transactions; at_least_once: without them (redo after a crash).
    processing_guarantee: Guarantee = "exactly_once"
    config: dict[str, Any] = Field(default_factory=dict)  # checked against the type's Config


class LinkSpec(BaseModel):
    """`from: FN.PORT` (or `ingress`, or `FN` for FN.pass) `to:` destinations."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from")
    to: str | list[str] = Field(min_length=1)  # FN, egress, discard or topic:NAME


# A Linux interface name: at most IFNAMSIZ - 1 characters, no slash or space.
Interface = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")]


class EgressSpec(BaseModel):
    """`egress:` live transmit (docs/LIVE.md): `snf sink` sends egress packets to
    interfaces. `interface`: all of them to one; `inline: [A, B]`: two arms, what
    `snf capture` took on one leaves by the other."""

    model_config = ConfigDict(extra="forbid")

    interface: Interface | None = None
    inline: list[Interface] | None = Field(default=None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _one_way(self) -> EgressSpec:
        if (self.interface is None) == (self.inline is None):
            raise PydanticCustomError(
                "egress_form", "expected exactly one of `interface` or `inline`"
            )
        if self.inline is not None and self.inline[0] == self.inline[1]:
            raise PydanticCustomError("egress_arms", "expected two different interfaces")
        return self


class PipelineSpec(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=names.NAME_PATTERN)  # first part of every derived name
    partitions: int = Field(default=4, ge=1, le=1024)  # default of every function
    # Topic replication factor (default); None: the cluster's, min(3, brokers), as
    # Kafka Streams leaves it to the broker. Resolved at deploy (Pipeline.resolved).
    replication: int | None = Field(default=None, ge=1, le=16)
    # heads: topics after ingress carry packet heads where no function downstream
    # reads payload, and readers of terminals join the payload back from ingress;
    # whole: every topic carries whole packets (for consumers other than snf's sink).
    ship: Literal["heads", "whole"] = "heads"
    functions: list[FunctionSpec] = Field(min_length=1)  # a chain unless `wiring` is given
    wiring: list[LinkSpec] | None = Field(default=None, min_length=1)
    egress: EgressSpec | None = None  # live transmit (snf sink); None: files only

    @model_validator(mode="after")
    def _check_functions(self) -> PipelineSpec:
        conflicts = spec_conflicts(self)
        if conflicts:
            # One error can carry several exact locations; the loader unpacks them.
            summary = "; ".join(f"{dotted(loc)}: {msg}" for loc, msg in conflicts)
            ctx = {"summary": summary, "conflicts": conflicts}
            raise PydanticCustomError("pipeline_conflict", "{summary}", ctx)
        return self


def spec_conflicts(spec: PipelineSpec) -> list[tuple[Loc, str]]:
    """Cross-field problems: duplicate function names, instances above partitions."""
    found: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    for i, fn in enumerate(spec.functions):
        if fn.name in first:
            msg = (
                f"duplicate function name {fn.name!r} (already used by functions[{first[fn.name]}])"
            )
            found.append((("functions", i, "name"), msg))
        first.setdefault(fn.name, i)
        n = fn.partitions or spec.partitions
        if isinstance(fn.instances, Autoscale) and fn.instances.max > n:
            msg = f"max ({fn.instances.max}) must not exceed partitions ({n})"
            found.append((("functions", i, "instances", "max"), msg))
        elif isinstance(fn.instances, int) and fn.instances > n:
            msg = f"instances ({fn.instances}) must not exceed partitions ({n})"
            found.append((("functions", i, "instances"), msg))
    return found
