"""Job and run states: one StrEnum each, one table of allowed moves, one function that checks.

A job is what a dispatcher asked for; a run is one attempt at it on one site (Armada's model).
The job's state follows its current run while it has one. Every other move is refused.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from jinsuan.kernel.errors import Conflict


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PLACED = "placed"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunState(enum.StrEnum):
    PLACED = "placed"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # its lease expired: the site is presumed gone and the job re-queued


J, R = JobState, RunState

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    J.QUEUED: frozenset({J.PLACED, J.CANCELLED}),
    J.PLACED: frozenset({J.LEASED, J.QUEUED, J.FAILED, J.CANCELLED}),
    # leased → succeeded/failed: a run so short that its "running" report never came.
    J.LEASED: frozenset({J.RUNNING, J.SUCCEEDED, J.FAILED, J.QUEUED, J.CANCELLED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.QUEUED, J.CANCELLED}),
    J.FAILED: frozenset({J.QUEUED}),  # retried while tries remain
    J.SUCCEEDED: frozenset(),
    J.CANCELLED: frozenset(),
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    R.PLACED: frozenset({R.LEASED, R.LOST, R.CANCELLED}),
    R.LEASED: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED, R.LOST, R.CANCELLED}),
    R.RUNNING: frozenset({R.SUCCEEDED, R.FAILED, R.LOST, R.CANCELLED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
    R.CANCELLED: frozenset(),
    R.LOST: frozenset(),
}

LIVE_RUN_STATES = (R.PLACED, R.LEASED, R.RUNNING)  # these hold capacity at their site
ENDED_RUN_STATES = frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED, R.LOST})

S = TypeVar("S", JobState, RunState)


class IllegalTransition(Conflict):
    code = "illegal_transition"


def transition(current: S, target: S) -> S:
    """Return ``target`` if moving from ``current`` is allowed; raise IllegalTransition if not."""
    table: dict = JOB_TRANSITIONS if isinstance(current, JobState) else RUN_TRANSITIONS
    if type(target) is not type(current) or target not in table[current]:
        kind = "job" if isinstance(current, JobState) else "run"
        raise IllegalTransition(f"a {kind} cannot move from {current} to {target}", field="state")
    return target
