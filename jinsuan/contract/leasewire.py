"""The lease protocol between the platform's scheduler and site agents.

Agents pull work: ``POST /v1/leases`` is both the request for new runs and the heartbeat that
renews the runs the agent holds; ``POST /v1/runs/{run_id}/events`` reports one state change of
one run, carrying the run's fencing token. Both bodies are signed exactly like reports (headers
``X-Jinsuan-Agent`` and ``X-Jinsuan-Signature``, Ed25519 over the exact body bytes, see
``jinsuan.contract.signing``) and carry ``sent_at``; the platform refuses a body whose
``sent_at`` is more than ``REPLAY_WINDOW_S`` from its clock with 401.

A run is one attempt at one job at one site. Its fencing token changes each time the job is
leased again, so a report from an older lease (a site that lost its lease and came back) is
recognised and refused with 409 ``stale_lease``; a run also ends once, so a second end report
with a different outcome is refused the same way.

Long poll: a lease request may carry ``wait_s``. When the platform has no new run for the agent
(and nothing to cancel or drop), it may hold the request open until a run is placed at the
agent's site or ``wait_s`` passes, whichever comes first, and then answers as usual; so an agent
that asks again as soon as it has its answer learns of new work within moments, not a polling
interval. The platform holds a request at most ``MAX_LEASE_WAIT_S`` and at most a third of the
lease TTL, whatever ``wait_s`` asks, so a held request never lets the agent's leases lapse; the
held runs are renewed when the request arrives. ``wait_s`` 0 (the default) answers at once.
A cancel is not a reason to end a held request early: the agent learns of it in the next answer.

Executors: the request names the executor the agent runs (``executor``). The platform refuses
every request (409) whose executor is not the one registered for the site, records what the
agent announced, and places nothing more at the site until the two agree. What each executor
can do is ``EXECUTOR_CAPABILITIES``; placement sends a job only where its executor can run it.

Like ``jinsuan.contract.wire`` this module is import-light: agents import it and nothing else
from the platform.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field, field_validator

from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER, AwareDatetime, Ident, _Wire

__all__ = [
    "AGENT_HEADER",
    "EVENT_STATUS_DUPLICATE",
    "EVENT_STATUS_RECORDED",
    "EXECUTOR_CAPABILITIES",
    "LEASES_PATH",
    "LOG_TAIL_MAX_BYTES",
    "MAX_LEASE_WAIT_S",
    "REPLAY_WINDOW_S",
    "SIGNATURE_HEADER",
    "STALE_LEASE_CODE",
    "Capability",
    "EventAck",
    "ExecutorKind",
    "HeldRun",
    "Lease",
    "LeaseReply",
    "LeaseRequest",
    "Payload",
    "RunEvent",
    "RunEventState",
    "run_events_path",
]

LEASES_PATH = "/v1/leases"
REPLAY_WINDOW_S = 300.0
LOG_TAIL_MAX_BYTES = 64 * 1024
MAX_LEASE_WAIT_S = 20.0  # below the agent's default 30 s request timeout
STALE_LEASE_CODE = "stale_lease"
EVENT_STATUS_RECORDED = "recorded"
EVENT_STATUS_DUPLICATE = "duplicate"


def run_events_path(run_id: str) -> str:
    return f"/v1/runs/{run_id}/events"


class ExecutorKind(enum.StrEnum):
    SLURM = "slurm"
    KUBERNETES = "kubernetes"
    PROCESS = "process"


class Capability(enum.StrEnum):
    """What an executor does with a lease, beyond running its command once."""

    GANG = "gang"  # every one of a lease's ``tasks`` runs (billing counts every task)
    IMAGE = "image"  # the command runs in the payload's container image
    ACCELERATOR_ISOLATION = "accelerator_isolation"  # a run sees only the accelerators it leased


# What each executor guarantees (``agents.executors``). Slurm: ``--ntasks`` under ``srun``, all
# started together, and ``--gres`` confines a run to its devices; it runs the command on the
# node, not in the image. Kubernetes: an Indexed Job of ``tasks`` pods in the payload's image
# (started together only under a gang scheduler), devices as resource limits. Process: one
# command on the agent's host, whatever ``tasks`` says, without the image; it confines runs to
# their devices only when the site sets its ``devices`` option, which the platform cannot see,
# so it is not promised. Placement filters on GANG (tasks > 1) and IMAGE (a payload image), what
# a job's spec can ask for; isolation is shown with the site for dispatchers to judge.
EXECUTOR_CAPABILITIES: dict[ExecutorKind, frozenset[Capability]] = {
    ExecutorKind.SLURM: frozenset({Capability.GANG, Capability.ACCELERATOR_ISOLATION}),
    ExecutorKind.KUBERNETES: frozenset(
        {Capability.GANG, Capability.IMAGE, Capability.ACCELERATOR_ISOLATION}),
    ExecutorKind.PROCESS: frozenset(),
}


class RunEventState(enum.StrEnum):
    """The run states an agent may report; the platform owns every other state."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Payload(_Wire):
    """What the site's executor runs: a command, optionally in a container image."""

    command: list[str] = Field(min_length=1)
    image: str | None = Field(default=None, max_length=512)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = Field(default=None, max_length=4096)


class HeldRun(_Wire):
    run_id: Ident
    fencing_token: int = Field(ge=1)


class LeaseRequest(_Wire):
    """The agent's lease request and heartbeat: the runs it holds and how many more it takes."""

    agent_id: Ident
    sent_at: AwareDatetime
    executor: ExecutorKind
    held: list[HeldRun] = Field(default_factory=list)
    free_slots: int = Field(ge=0, description="How many more runs the agent accepts now.")
    wait_s: float = Field(
        default=0.0, ge=0, le=MAX_LEASE_WAIT_S,
        description="Hold the request up to this long until a run is placed here (long poll).")


class Lease(_Wire):
    """One run leased to the agent: all ``tasks`` start together at this site (a gang)."""

    run_id: Ident
    job_id: Ident
    fencing_token: int = Field(ge=1)
    tasks: int = Field(ge=1)
    accelerators_per_task: int = Field(ge=0)
    accelerator_model: str | None = None
    payload: Payload
    max_runtime_s: int | None = Field(default=None, gt=0)
    tenant: str
    project: str


class LeaseReply(_Wire):
    """``renewed``: held runs whose lease now lasts ``lease_ttl_s`` more. ``new``: start these.
    ``cancel``: stop these (cancelled by a user, or no longer assigned here). ``lost``: the lease
    is gone (expired and re-queued, or already ended): stop them and do not report their end."""

    lease_ttl_s: float = Field(gt=0)
    renewed: list[Ident] = Field(default_factory=list)
    new: list[Lease] = Field(default_factory=list)
    cancel: list[Ident] = Field(default_factory=list)
    lost: list[Ident] = Field(default_factory=list)


class RunEvent(_Wire):
    """One state change of one run, reported under the lease's fencing token."""

    agent_id: Ident
    sent_at: AwareDatetime
    fencing_token: int = Field(ge=1)
    state: RunEventState
    at: AwareDatetime
    exit_code: int | None = None
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    log_tail: str = Field(default="", max_length=LOG_TAIL_MAX_BYTES)
    executor_ref: str | None = Field(default=None, max_length=256)

    @field_validator("log_tail")
    @classmethod
    def _tail_fits(cls, value: str) -> str:
        size = len(value.encode())
        if size > LOG_TAIL_MAX_BYTES:
            raise ValueError(f"log_tail is {size} bytes; at most {LOG_TAIL_MAX_BYTES}")
        return value


class EventAck(_Wire):
    status: Literal["recorded", "duplicate"]
