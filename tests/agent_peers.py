"""Real peers for the agent's tests: a report receiver on loopback and a deterministic probe.

``Receiver`` speaks the platform's agent API over real HTTP (stdlib ``http.server``): it enrols
agents with one-time tokens, verifies each report's Ed25519 signature over the gunzipped body,
validates the batch with the wire schema, and stores each ``(agent, seq)`` once, answering
``duplicate`` for a repeat, as the platform's intake does. Tests can make it answer 503, 422 or
429, drop the connection without answering, hold a request open until released, or go down
entirely and come back on the same port.

``JournalProbe`` emits a fixed number of series whose values are a function of the read time
(``power_at``), and appends each read's time to a journal file (fsynced) before returning, so a
test knows every sample the agent was handed, even across SIGKILL.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.probe import Point, Reading
from jinsuan.contract import signing
from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER, AcceleratorInfo, Batch

# -- receiver --------------------------------------------------------------------------------


@dataclass
class Arrival:
    agent: str
    seq: int
    answer: int  # HTTP status sent (0: connection dropped without an answer)
    status: str = ""  # "stored" / "duplicate" for 200


@dataclass
class Rule:
    """Answer the next ``count`` report requests this way (or forever when count is None)."""

    action: str  # "503", "422", "429", "401", "drop", "hold"
    count: int | None = 1
    seqs: frozenset[int] | None = None  # only these seqs; None: any
    retry_after: str | None = None


@dataclass
class ReceiverState:
    tokens: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)  # agent id -> public key b64
    # (agent, seq) -> what `keep` made of the batch
    stored: dict[tuple[str, int], Any] = field(default_factory=dict)
    arrivals: list[Arrival] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


class Receiver:
    def __init__(self, port: int = 0, keep: Callable[[Batch], Any] | None = None) -> None:
        self.state = ReceiverState()
        self.keep = keep or (lambda batch: batch)
        self.lock = threading.Lock()
        self.held = threading.Event()  # a request is being held open
        self.release = threading.Event()  # let held requests go (their client may be dead)
        self.changed = threading.Condition(self.lock)
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> Receiver:
        handler = _handler_for(self)
        server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down entirely: stop listening (clients now get connection refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # configuration
    def add_token(self, token: str) -> None:
        with self.lock:
            self.state.tokens.add(token)

    def register(self, agent_id: str, public_key: str) -> None:
        with self.lock:
            self.state.keys[agent_id] = public_key

    def add_rule(self, rule: Rule) -> None:
        with self.lock:
            self.state.rules.append(rule)

    # observation
    def wait_for(self, predicate: Callable[[ReceiverState], bool], timeout: float = 60) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.state), timeout):
                raise AssertionError(f"receiver: condition not met within {timeout}s")

    def stored_seqs(self, agent: str) -> list[int]:
        with self.lock:
            return sorted(seq for (a, seq) in self.state.stored if a == agent)

    def first_arrival_order(self, agent: str) -> list[int]:
        """Seqs in the order they first reached the receiver."""
        seen: dict[int, None] = {}
        with self.lock:
            for arrival in self.state.arrivals:
                if arrival.agent == agent:
                    seen.setdefault(arrival.seq)
        return list(seen)

    # request handling (called on server threads)
    def _take_rule(self, seq: int) -> Rule | None:
        for rule in self.state.rules:
            if rule.seqs is not None and seq not in rule.seqs:
                continue
            if rule.count is not None:
                rule.count -= 1
                if rule.count == 0:
                    self.state.rules.remove(rule)
            return rule
        return None

    def _note(self, arrival: Arrival) -> None:
        self.state.arrivals.append(arrival)
        self.changed.notify_all()


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
                   ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(data)

        def _error(self, status: int, code: str, reason: str, field_: str | None = None,
                   headers: dict[str, str] | None = None) -> None:
            self._reply(status, {"error": {"code": code, "field": field_, "reason": reason}},
                        headers)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/v1/agents/enrol":
                self._enrol(raw)
            elif self.path == "/v1/reports":
                self._report(raw)
            else:
                self._error(404, "not_found", f"no route {self.path}")

        def _enrol(self, raw: bytes) -> None:
            body = json.loads(raw)
            with receiver.lock:
                if body.get("token") not in receiver.state.tokens:
                    self._error(401, "unauthenticated", "enrolment token unknown", "token")
                    return
                receiver.state.tokens.discard(body["token"])
                agent_id = f"agt_{len(receiver.state.keys) + 1:04d}"
                receiver.state.keys[agent_id] = body["public_key"]
            self._reply(200, {"agent_id": agent_id, "site_id": 7, "site_name": "test-site"})

        def _report(self, raw: bytes) -> None:
            agent = self.headers.get(AGENT_HEADER, "")
            body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            with receiver.lock:
                key = receiver.state.keys.get(agent)
            if key is None or not signing.verify(
                signing.load_public_key(key), body, self.headers.get(SIGNATURE_HEADER, "")
            ):
                self._error(401, "unauthenticated", "bad signature or unknown agent")
                return
            try:
                batch = Batch.model_validate_json(body)
            except ValidationError as exc:
                self._error(422, "invalid", str(exc.errors()[0]["msg"]), "batch")
                return
            assert batch.agent_id == agent
            with receiver.lock:
                rule = receiver._take_rule(batch.seq)
            if rule is not None and rule.action != "hold":
                self._misbehave(rule, agent, batch.seq)
                return
            with receiver.lock:
                key_ = (agent, batch.seq)
                status = "duplicate" if key_ in receiver.state.stored else "stored"
                if key_ not in receiver.state.stored:
                    receiver.state.stored[key_] = receiver.keep(batch)
                if rule is None:
                    receiver._note(Arrival(agent, batch.seq, 200, status))
            if rule is not None:  # committed, but hold the answer like a stalled network
                with receiver.lock:
                    receiver._note(Arrival(agent, batch.seq, 0, "held"))
                receiver.held.set()
                receiver.release.wait(60)
            self._reply(200, {"agent_id": agent, "seq": batch.seq, "status": status,
                              "samples": batch.sample_count()})

        def _misbehave(self, rule: Rule, agent: str, seq: int) -> None:
            with receiver.lock:
                receiver._note(Arrival(agent, seq, 0 if rule.action == "drop" else
                                       int(rule.action)))
            if rule.action == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            headers = {"Retry-After": rule.retry_after} if rule.retry_after else None
            if rule.action == "422":
                self._error(422, "invalid", "power 9e9 W is above the plausible bound",
                            "series[0].points[0]")
            elif rule.action == "401":
                self._error(401, "unauthenticated", "unknown agent")
            else:
                self._error(int(rule.action), "unavailable", "try later", headers=headers)

    return Handler


# -- deterministic probe ---------------------------------------------------------------------


def power_at(unix_ms: int, device: int) -> float:
    """The journal probe's value for ``device`` at ``unix_ms``: plausible watts, hard to gzip."""
    return ((unix_ms * 2654435761 + device * 40503) % 1_000_003) / 1000.0


class JournalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    devices: int = Field(default=4, ge=1, le=10_000)
    max_reads: int | None = Field(default=None, ge=1,
                                  description="Reads (over all runs) after which it reads nothing.")


class JournalProbe:
    """``devices`` accelerators whose power is ``power_at(time, index)``.

    Each read's time is appended to the journal (fsynced) before the read returns, so the
    journal lists every read the agent was handed, across restarts and SIGKILL.
    """

    name = "journal"

    def __init__(self, config: JournalConfig) -> None:
        self.config = config
        self._uuids = [f"GPU-{i:04d}" for i in range(config.devices)]
        self._reads = len(_repair(config.path))

    def read(self, now: datetime) -> Reading:
        if self.config.max_reads is not None and self._reads >= self.config.max_reads:
            return Reading()
        unix_ms = round(now.timestamp() * 1000)
        points = [Point("accelerator_power_watts", uuid, power_at(unix_ms, i))
                  for i, uuid in enumerate(self._uuids)]
        with open(self.config.path, "a", encoding="utf-8") as journal:
            journal.write(f"{unix_ms}\n")
            journal.flush()
            os.fsync(journal.fileno())
        self._reads += 1
        accelerators = [AcceleratorInfo(uuid=u, model="NVIDIA H800", vendor="NVIDIA")
                        for u in self._uuids]
        return Reading(points=points, accelerators=accelerators)


def _repair(path: Path) -> list[int]:
    """At probe start (the only writer is not running): drop a line cut short by SIGKILL."""
    if path.exists():
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    return journal_reads(path)


def journal_reads(path: Path) -> list[int]:
    """The read times journaled so far; read-only, so safe while the agent is appending."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [int(line) for line in data[: data.rfind(b"\n") + 1].decode().split()]


@dataclass(frozen=True)
class JournalBatch:
    """What the receiver keeps of a journal probe's batch: its read times and a value check."""

    times: tuple[int, ...]
    samples: int
    wrong: int  # samples whose value is not power_at(time, device)


def summarize(batch: Batch) -> JournalBatch:
    times: set[int] = set()
    samples = wrong = 0
    for series in batch.series:
        index = int(series.device[4:8])  # "GPU-0042" or "GPU-0042-<hex>"
        for unix_ms, value in series.points:
            times.add(unix_ms)
            samples += 1
            wrong += value != power_at(unix_ms, index)
    return JournalBatch(tuple(sorted(times)), samples, wrong)


class BrokenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    library: str = "libnvidia-ml.so.1"


class BrokenProbe:
    """A probe whose library is missing on this host: its constructor fails, as NVML's would."""

    name = "broken"

    def __init__(self, config: BrokenConfig) -> None:
        raise RuntimeError(f"cannot load {config.library}: no such file")

    def read(self, now: datetime) -> Reading:
        raise AssertionError("never started")


TEST_KINDS = {
    "journal": ("tests.agent_peers:JournalConfig", "tests.agent_peers:JournalProbe"),
    "broken": ("tests.agent_peers:BrokenConfig", "tests.agent_peers:BrokenProbe"),
}
