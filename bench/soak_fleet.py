"""The simulated side of ``bench/soak.py``: sites' signed report streams, their agents' lease
loops, and a dispatcher submitting jobs at a steady rate. Each is one thread that talks to the
platform over HTTP on loopback exactly as the real thing does, and counts what the platform
acknowledged, so the soak can hold the store to it at the end.

* :class:`SiteStream`: a site's agent sending its ``SimulatedSite`` readings as signed,
  gzip'd reports (``agents.uploader.seal``, the agent's own code), one report in flight,
  resent until acknowledged (the platform stores each ``(agent, seq)`` once, so a resend whose
  first copy was stored is answered ``duplicate``, and counted once).
* :class:`LeaseAgent`: the same site's lease loop, as ``agents.worker`` behaves with its
  defaults (a signed lease request every ``heartbeat_interval``, renewing what it holds, at most
  ``max_runs``), minus the executor: a leased run is reported running at once and succeeded
  when its ``sleep`` would have ended.
* :class:`Dispatcher`: one API client with dispatcher keys, open loop at ``rate`` per second;
  the voucher tenant's jobs carry its voucher.

The threads share the soak's process: the load is a few requests a second each, mostly waiting.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.probe import Reading
from agents.probes.simulated import SimulatedSite
from agents.uploader import seal, unseal
from agents.worker import WorkerSettings, heartbeat_interval
from jinsuan.contract.leasewire import (
    LEASES_PATH,
    HeldRun,
    LeaseReply,
    LeaseRequest,
    RunEvent,
    run_events_path,
)
from jinsuan.contract.signing import sign
from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER, ReportAck
from jinsuan.demo.history import batch_of, moments

#: After the soak asks a stream to stop, it still resends its report in flight this long.
DRAIN_S = 30.0


class Http:
    """One kept-alive connection to the platform, as each agent thread holds; reopened after an
    error. The standard library's client: a quarter of httpx's CPU per request, and the
    clients share the machine's two cores with the platform they measure."""

    def __init__(self, port: int, timeout_s: float = 30.0) -> None:
        self.port, self.timeout_s = port, timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes,
                                                                           float]:
        """(status, body, Retry-After seconds or 0); raises OSError or HTTPException."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                    timeout=self.timeout_s)
        try:
            self._conn.request("POST", path, body=body,
                               headers={"Content-Type": "application/json", **headers})
            response = self._conn.getresponse()
            return response.status, response.read(), float(
                response.getheader("Retry-After") or 0)
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class SimSite:
    """A simulated site as enrolled: its ids, its agent's key and its simulator."""

    site_id: int
    name: str
    agent_id: str
    key: Ed25519PrivateKey
    simulator: SimulatedSite


class SiteStream(threading.Thread):
    """The site's report stream: ``backfill`` first (called before ``start``), then one
    reading every ``interval_s`` until stopped. Counts are read by other threads: ints and
    appends, each written by this thread only."""

    def __init__(self, port: int, site: SimSite, interval_s: float,
                 stop: threading.Event) -> None:
        super().__init__(name=f"reports-{site.name}", daemon=True)
        self.site, self.interval_s, self.stop = site, interval_s, stop
        self.http = Http(port)
        self.seq = 0
        self.acked_samples = 0
        self.acked_reports = 0
        self.resends = 0
        self.unacked = 0  # reports given up on (a stop with one in flight past DRAIN_S)
        self.refused: Counter[str] = Counter()  # permanent refusals, by status and code
        self.acked_times: list[tuple[datetime, float]] = []  # (reading, step s) acknowledged
        self.error: str | None = None

    def backfill(self, start: datetime, end: datetime, step: timedelta, per_batch: int) -> None:
        """The site's readings from ``start`` (or after the last one sent) to ``end``,
        ``per_batch`` to a report."""
        if self.acked_times:
            start = self.acked_times[-1][0] + step
        pending: list[tuple[datetime, Reading]] = []
        for moment in moments(start, end, step):
            pending.append((moment, self.site.simulator.read(moment)))
            if len(pending) == per_batch:
                self._send(pending, step)
                pending = []
        if pending:
            self._send(pending, step)

    def run(self) -> None:
        step = timedelta(seconds=self.interval_s)
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                now = datetime.now(UTC)
                self._send([(now, self.site.simulator.read(now))], step)
                self.stop.wait(max(self.interval_s - (time.monotonic() - began), 0))
        except Exception as exc:  # reported by the soak as a failure, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.http.close()

    def _send(self, readings: list[tuple[datetime, Reading]], step: timedelta) -> None:
        self.seq += 1
        batch = batch_of(self.site.agent_id, self.seq, readings, step)
        sealed = unseal(seal(self.site.agent_id, self.site.key,
                             batch.model_dump_json().encode()))
        headers = {"Content-Encoding": "gzip", AGENT_HEADER: self.site.agent_id,
                   SIGNATURE_HEADER: sealed.signature}
        give_up = None
        while True:
            if self.stop.is_set() and give_up is None:
                give_up = time.monotonic() + DRAIN_S
            if give_up is not None and time.monotonic() > give_up:
                self.unacked += 1
                return
            try:
                status, answer, retry_after = self.http.post("/v1/reports", sealed.gzip_body,
                                                             headers)
            except (OSError, http.client.HTTPException):
                self.resends += 1
                time.sleep(1.0)
                continue
            if status == 200:
                ack = ReportAck.model_validate_json(answer)
                if ack.status == "stored" and ack.samples != batch.sample_count():
                    self.refused[f"stored {ack.samples} of {batch.sample_count()}"] += 1
                self.acked_samples += batch.sample_count()
                self.acked_reports += 1
                self.acked_times.extend((moment, step.total_seconds())
                                        for moment, _ in readings)
                return
            if status in (429, 503) or status >= 500:
                self.resends += 1
                time.sleep(max(retry_after, 1.0))
                continue
            self.refused[f"{status} {_code(answer)}"] += 1
            return


@dataclass
class HeldLease:
    token: int
    ends_at: float  # monotonic: when its ``sleep`` would end


class LeaseAgent(threading.Thread):
    """The site's lease loop (see the module's docstring). ``max_runs`` and ``heartbeat_s`` as
    ``agents.worker``'s defaults unless given."""

    def __init__(self, port: int, site: SimSite, stop: threading.Event, *,
                 max_runs: int | None = None) -> None:
        super().__init__(name=f"leases-{site.name}", daemon=True)
        defaults = WorkerSettings(kind="process")
        self.site, self.stop = site, stop
        self.max_runs = defaults.max_runs if max_runs is None else max_runs
        self.heartbeat_s = defaults.heartbeat_s
        self.http = Http(port)
        self.held: dict[str, HeldLease] = {}
        self.leased = 0
        self.finished = 0
        self.lost = 0  # runs the platform answered lost or cancelled, or refused an event of
        self.refused: Counter[str] = Counter()
        self.error: str | None = None

    def run(self) -> None:
        interval = self.heartbeat_s
        try:
            while not self.stop.is_set():
                asked = time.monotonic()
                ttl = self._ask()
                if ttl is not None:
                    interval = heartbeat_interval(self.heartbeat_s, ttl)
                due = asked + interval
                while not self.stop.is_set():  # end runs as they come due, until the next ask
                    self._end_due()
                    wake = min([due, *(h.ends_at for h in self.held.values())])
                    if time.monotonic() >= due:
                        break
                    self.stop.wait(max(wake - time.monotonic(), 0.01))
        except Exception as exc:  # reported by the soak as a failure, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.http.close()

    def _signed(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            status, answer, _ = self.http.post(path, body, {
                AGENT_HEADER: self.site.agent_id, SIGNATURE_HEADER: sign(self.site.key, body)})
        except (OSError, http.client.HTTPException) as exc:
            return 0, str(exc).encode()
        return status, answer

    def _ask(self) -> float | None:
        """One lease request; the lease TTL the platform gave, or None when refused."""
        body = LeaseRequest(
            agent_id=self.site.agent_id, sent_at=datetime.now(UTC), executor="process",
            held=[HeldRun(run_id=r, fencing_token=h.token) for r, h in self.held.items()],
            free_slots=max(0, self.max_runs - len(self.held)),
        ).model_dump_json().encode()
        status, answer = self._signed(LEASES_PATH, body)
        if status != 200:
            self.refused[f"lease {status} {_code(answer)}"] += 1
            return None
        reply = LeaseReply.model_validate_json(answer)
        for run_id in reply.lost + reply.cancel:
            if self.held.pop(run_id, None) is not None:
                self.lost += 1
        for lease in reply.new:
            self.leased += 1
            runtime = float(lease.payload.command[-1])  # the job is ``sleep <seconds>``
            self.held[lease.run_id] = HeldLease(lease.fencing_token,
                                                time.monotonic() + runtime)
            self._event(lease.run_id, lease.fencing_token, "running")
        return reply.lease_ttl_s

    def _end_due(self) -> None:
        now = time.monotonic()
        for run_id, held in list(self.held.items()):
            if held.ends_at <= now:
                del self.held[run_id]
                if self._event(run_id, held.token, "succeeded", exit_code=0):
                    self.finished += 1

    def _event(self, run_id: str, token: int, state: str, exit_code: int | None = None
               ) -> bool:
        now = datetime.now(UTC)
        body = RunEvent(agent_id=self.site.agent_id, sent_at=now, fencing_token=token,
                        state=state, at=now, exit_code=exit_code,
                        ended_at=now if state != "running" else None,
                        ).model_dump_json().encode()
        status, answer = self._signed(run_events_path(run_id), body)
        if status == 200:
            return True
        self.refused[f"{state} {status} {_code(answer)}"] += 1
        if status == 409:
            self.held.pop(run_id, None)
            self.lost += 1
        return False


@dataclass(frozen=True)
class JobKind:
    tenant: str
    project: str
    accelerators: tuple[int, ...]
    domestic_only: bool = False
    voucher: bool = False


#: The dispatcher's mix: the voucher tenant's jobs carry its voucher (they draw at the
#: provider's sites and draw nothing, with the reason, elsewhere).
MIX = (
    JobKind("soak-lab", "finetune", (1, 2, 4), voucher=True),
    JobKind("soak-univ", "inference", (1,)),
    JobKind("soak-gov", "training", (2, 4), domestic_only=True),
)


class Dispatcher(threading.Thread):
    """Submits ``rate`` jobs a second (open loop) until stopped; each job sleeps
    ``runtime_s[0]``..``runtime_s[1]`` seconds."""

    def __init__(self, port: int, keys: dict[str, str], *, rate: float,
                 runtime_s: tuple[int, int], voucher: int, stop: threading.Event,
                 seed: int = 16) -> None:
        super().__init__(name="dispatcher", daemon=True)
        self.port, self.keys, self.rate, self.runtime_s = port, keys, rate, runtime_s
        self.voucher, self.stop = voucher, stop
        self.random = random.Random(seed)
        self.submits: list[tuple[float, float]] = []  # (sent, round trip), monotonic seconds
        self.job_ids: list[str] = []
        self.refused: Counter[str] = Counter()
        self.error: str | None = None

    def run(self) -> None:
        client = Http(self.port)
        start, n = time.monotonic(), 0
        try:
            while not self.stop.wait(max(start + n / self.rate - time.monotonic(), 0)):
                n += 1
                self._submit(client)
        except Exception as exc:  # reported by the soak as a failure, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()

    def _submit(self, client: Http) -> None:
        kind = self.random.choice(MIX)
        runtime = self.random.randint(*self.runtime_s)
        spec: dict[str, object] = {
            "project": kind.project, "name": f"{kind.project}-{len(self.job_ids) + 1}",
            "accelerators_per_task": self.random.choice(kind.accelerators),
            "constraints": {"domestic_only": kind.domestic_only},
            "max_runtime_s": runtime + 60, "payload": {"command": ["sleep", str(runtime)]}}
        if kind.voucher:
            spec["voucher"] = self.voucher
        sent = time.monotonic()
        try:
            status, answer, _ = client.post(
                "/v1/jobs", json.dumps(spec).encode(),
                {"Authorization": f"Bearer {self.keys[kind.tenant]}"})
        except (OSError, http.client.HTTPException) as exc:
            # Not resent: a submit is not idempotent. Whether the platform took it shows in
            # the end-to-end count of jobs.
            self.refused[type(exc).__name__] += 1
            return
        self.submits.append((sent, time.monotonic() - sent))
        if status == 201:
            self.job_ids.append(json.loads(answer)["id"])
        else:
            self.refused[f"{status} {_code(answer)}"] += 1


def _code(answer: bytes) -> str:
    """The error code of a JSON error answer, or its first bytes."""
    try:
        return str(json.loads(answer)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return answer[:80].decode(errors="replace")
