"""Helpers for the executor and lease-worker tests: leases, and waiting on a condition."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from agents.executors import Executor, RunStatus
from jinsuan.contract.leasewire import Lease, Payload

T = TypeVar("T")


def make_lease(command: list[str], **fields: Any) -> Lease:
    payload = Payload(
        command=command,
        image=fields.pop("image", None),
        env=fields.pop("env", {}),
        workdir=fields.pop("workdir", None),
    )
    values: dict[str, Any] = {
        "run_id": f"run-{uuid.uuid4().hex[:12]}",
        "job_id": f"job-{uuid.uuid4().hex[:12]}",
        "fencing_token": 1,
        "tasks": 1,
        "accelerators_per_task": 0,
        "tenant": "tenant-a",
        "project": "proj-1",
        "payload": payload,
    }
    values.update(fields)
    return Lease(**values)


def wait_for(
    probe: Callable[[], T], until: Callable[[T], bool], timeout: float = 30.0, every: float = 0.05
) -> T:
    """Call ``probe`` until ``until(result)`` holds; fail with the last result after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last: {result!r}")
        time.sleep(every)


def wait_ended(executor: Executor, ref: str, timeout: float = 30.0) -> RunStatus:
    return wait_for(lambda: executor.poll(ref), lambda s: s.state.ended, timeout)
