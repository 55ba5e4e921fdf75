"""The wire schema between site agents and the platform.

With ``jinsuan.contract.leasewire`` and ``jinsuan.contract.signing`` this is what an agent
and the platform agree on. A report is one ``Batch`` serialised as JSON, optionally
gzip-encoded, signed with the agent's Ed25519 key over the exact uncompressed body bytes (see
``jinsuan.contract.signing``). Samples travel as series, Prometheus style: one
``(metric, device)`` pair and its points, each point ``(unix milliseconds, value)``; this
keeps a batch compact and lets the platform validate and copy it without per-sample objects.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

Ident = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:@/-]+$")]

SIGNATURE_HEADER = "X-Jinsuan-Signature"
AGENT_HEADER = "X-Jinsuan-Agent"


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_utc)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Series(_Wire):
    """Points of one metric of one device. ``points`` are ``(unix_ms, value)`` pairs."""

    metric: Ident
    device: Ident
    points: list[tuple[int, float]] = Field(min_length=1)


class AcceleratorInfo(_Wire):
    """What an agent knows about one accelerator; the platform derives its FP16 peak."""

    uuid: Ident
    model: str = Field(min_length=1, max_length=128)
    vendor: str = Field(min_length=1, max_length=64)
    rack: Ident | None = None
    pci_bus_id: str | None = Field(default=None, max_length=64)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    sm_count: int | None = Field(default=None, gt=0)
    sm_clock_max_mhz: float | None = Field(default=None, gt=0)
    compute_capability: tuple[int, int] | None = None


class MeterRole(enum.StrEnum):
    FACILITY = "facility"  # the utility-side meter: everything the site draws
    IT = "it"  # IT equipment energy (ISO/IEC 30134-2 "IT equipment energy")


MeterPoint = Literal["utility_input", "ups_output", "pdu_output", "server_input"]


class MeterInfo(_Wire):
    id: Ident
    role: MeterRole
    measures: MeterPoint = Field(description="Where the meter sits in the power chain.")
    racks: list[Ident] = Field(default_factory=list, description="Racks this meter feeds.")


class Inventory(_Wire):
    racks: list[Ident] = Field(default_factory=list)
    accelerators: list[AcceleratorInfo] = Field(default_factory=list)
    meters: list[MeterInfo] = Field(default_factory=list)
    edge: bool = False


class Batch(_Wire):
    """One signed report. ``seq`` increases by agent; the platform stores each seq once."""

    agent_id: Ident
    seq: int = Field(ge=1)
    created_at: AwareDatetime
    interval_s: float = Field(gt=0, le=3600, description="The agent's sampling interval.")
    inventory: Inventory
    series: list[Series] = Field(default_factory=list)

    def sample_count(self) -> int:
        return sum(len(s.points) for s in self.series)


class ReportAck(_Wire):
    agent_id: str
    seq: int
    status: Literal["stored", "duplicate"]
    samples: int


SEQ_CONFLICT_CODE = "seq_conflict"


class ErrorBody(_Wire):
    code: str
    field: str | None = None
    reason: str
    next_seq: int | None = Field(
        default=None, description=f"With {SEQ_CONFLICT_CODE!r}: the first seq the platform has"
        " not stored for the agent; the agent renumbers its unsent batches from it.")


class ErrorResponse(_Wire):
    error: ErrorBody


class EnrolRequest(_Wire):
    token: str = Field(min_length=16, max_length=256)
    public_key: str = Field(description="Raw Ed25519 public key, base64 (32 bytes).")
    hostname: str = Field(min_length=1, max_length=255)


class EnrolResponse(_Wire):
    agent_id: str
    site_id: int
    site_name: str
