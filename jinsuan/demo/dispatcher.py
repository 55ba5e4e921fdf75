"""A simulated dispatcher for ``jinsuan demo``: a steady, seeded mix of jobs over the REST API.

It is an ordinary API client with dispatcher keys, exactly as a university's or a model lab's
scripts would be; the jobs themselves are ``sleep`` commands that the sites' process executors
really run.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from decimal import Decimal

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobKind:
    tenant: str
    project: str
    tasks: int
    accelerators_per_task: int
    runtime_s: tuple[int, int]
    models: tuple[str, ...] = ()
    domestic_only: bool = False
    max_price: Decimal | None = None
    weight: float = 1.0
    voucher: bool = False  # the tenant's jobs carry its voucher, where it has one


MIX: tuple[JobKind, ...] = (
    JobKind("taiyuan-univ", "inference", 1, 1, (20, 90), max_price=Decimal("12.00"), weight=5),
    JobKind("llm-lab", "finetune", 1, 4, (60, 180),
            models=("NVIDIA H800", "NVIDIA A800-SXM4-80GB", "NVIDIA H20"), weight=2,
            voucher=True),
    JobKind("llm-lab", "eval", 1, 1, (5, 15), models=("NVIDIA H800",), weight=2,
            voucher=True),
    # one task: the demo's sites run jobs as local processes, which take no gangs
    JobKind("gov-cloud", "training", 1, 16, (120, 300), domestic_only=True, weight=1),
)


class SimulatedDispatcher:
    """Submits one job every ``every_s`` seconds until stopped."""

    def __init__(self, base_url: str, keys: dict[str, str], *, every_s: float = 4.0,
                 seed: int = 2024, vouchers: dict[str, int] | None = None) -> None:
        self.base_url = base_url
        self.keys = keys
        self.vouchers = vouchers or {}
        self.every_s = every_s
        self.random = random.Random(seed)
        self.submitted = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.wait(self.every_s):
                self.submit_one(client)

    def submit_one(self, client: httpx.Client) -> None:
        kind = self.random.choices(MIX, weights=[k.weight for k in MIX])[0]
        runtime = self.random.randint(*kind.runtime_s)
        constraints: dict[str, object] = {"domestic_only": kind.domestic_only}
        if kind.models:
            constraints["models"] = list(kind.models)
        if kind.max_price is not None:
            constraints["max_price"] = str(kind.max_price)
        spec = {
            "project": kind.project,
            "name": f"{kind.project}-{self.submitted + 1}",
            "tasks": kind.tasks,
            "accelerators_per_task": kind.accelerators_per_task,
            "constraints": constraints,
            "max_runtime_s": runtime + 60,
            "retries": 1,
            "payload": {"command": ["sleep", str(runtime)]},
        }
        if kind.voucher and kind.tenant in self.vouchers:
            spec["voucher"] = self.vouchers[kind.tenant]
        try:
            response = client.post("/v1/jobs", json=spec,
                                   headers={"Authorization": f"Bearer {self.keys[kind.tenant]}"})
        except httpx.HTTPError as exc:
            log.warning("submitting a job failed: %s", exc)
            self.refused += 1
            return
        if response.status_code == 201:
            self.submitted += 1
        else:
            self.refused += 1
            log.warning("job refused (%s): %s", response.status_code, response.text)
