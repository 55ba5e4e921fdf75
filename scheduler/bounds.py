"""What a site may bill: its claimed run times bounded by what the platform saw itself.

The agent that reports a run's times is run by the party paid for them, so its ``started_at``
and ``ended_at`` are claims. The billed times are the claims held inside what the platform
observed (docs/metering.md, "Usage bounds"):

- a run starts no earlier than its lease was granted;
- it ends no later than the platform received the report of its end, and a claimed end later
  than that by more than ``clock_skew_s`` is refused (a claim in the future);
- it runs no longer than the job's ``max_runtime_s`` plus ``runtime_grace_s`` (the time an
  executor needs to notice the limit and stop the job);
- it ends no earlier than it starts.

A run that ends without the site's report (its lease expired, or the dispatcher cancelled it)
is billed up to the last moment the platform heard it alive: the last heartbeat naming it, or
its running report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from jinsuan.kernel.errors import Invalid


@dataclass(frozen=True, slots=True)
class Billed:
    started_at: datetime
    ended_at: datetime
    bounded_by: str  # why the billed times differ from the claims; '' when they do not


def refuse_future(name: str, claimed: datetime, received_at: datetime,
                  clock_skew_s: float) -> None:
    if claimed > received_at + timedelta(seconds=clock_skew_s):
        raise Invalid(f"{name} {claimed.isoformat()} is after the report was received"
                      f" ({received_at.isoformat()}, {clock_skew_s:g} s clock skew allowed)",
                      field=name)


def bound_start(claimed: datetime, *, leased_at: datetime, received_at: datetime,
                clock_skew_s: float) -> datetime:
    """The billed start of a run its site reports running: no earlier than its lease, no later
    than the report's receipt."""
    refuse_future("started_at", claimed, received_at, clock_skew_s)
    return min(max(claimed, leased_at), received_at)


def bound_claims(*, claimed_start: datetime | None, claimed_end: datetime, leased_at: datetime,
                 received_at: datetime, max_runtime_s: int | None, runtime_grace_s: float,
                 clock_skew_s: float) -> Billed:
    """The billed start and end of a run whose site reported its end."""
    refuse_future("ended_at", claimed_end, received_at, clock_skew_s)
    if claimed_start is not None and claimed_start > claimed_end:
        raise Invalid(f"started_at {claimed_start.isoformat()} is after ended_at"
                      f" {claimed_end.isoformat()}", field="started_at")
    reasons = []
    start = claimed_start or leased_at
    if start < leased_at:
        start = leased_at
        reasons.append("started before its lease: billed from the lease")
    end = min(claimed_end, received_at)
    if end < claimed_end:
        reasons.append("ended after its report was received: billed to the receipt")
    if max_runtime_s is not None:
        limit = start + timedelta(seconds=max_runtime_s + runtime_grace_s)
        if end > limit:
            end = limit
            reasons.append(f"ran past max_runtime_s {max_runtime_s} + {runtime_grace_s:g} s"
                           " grace: billed to the limit")
    if end < start:
        end = start
        reasons.append("ended before its lease: billed nothing")
    return Billed(start, end, "; ".join(reasons))
