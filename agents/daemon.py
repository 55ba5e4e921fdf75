"""The site agent: sample every probe once per interval, spool one signed batch, upload it.

Three kinds of threads:

* the sampling loop (the caller's thread): wakes on the interval grid (ticks at multiples of
  ``interval_s`` in unix time, scheduled on the monotonic clock so it neither drifts nor jumps
  with the wall clock), reads all probes, and appends one batch to the spool;
* one short-lived daemon thread per probe per cycle, so a probe stuck in a dead device's driver
  or a silent TCP peer costs only its own deadline: its result is abandoned and logged as a
  timeout, the other probes still report, and while it stays stuck it is skipped rather than
  piling up threads;
* the uploader (``agents.uploader``), which drains the spool independently, so an unreachable
  platform never delays sampling.

A batch is durable once ``Spool.append`` has returned; SIGKILL before that loses at most the
cycle being sampled, never one already spooled.

Entry points for the CLI: ``run_agent(config)`` and ``check_sources(config)``. ``main`` is the
same as ``jinsuan agent run`` without the CLI (``python -m agents.daemon --config site.toml``).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agents.clock import Clock, SystemClock
from agents.config import (
    PROBE_KINDS,
    AgentConfig,
    ConfigError,
    ProbeSpec,
    load_config,
    parse_listen,
)
from agents.exporter import AgentMetrics, serve
from agents.identity import Identity, IdentityError, load_identity
from agents.probe import Point, Probe, Reading
from agents.spool import Spool, SpoolFull
from agents.uploader import Backoff, Uploader, seal
from jinsuan.contract.metrics import CATALOGUE
from jinsuan.contract.wire import AcceleratorInfo, Batch, Ident, Inventory, MeterInfo, Series

log = logging.getLogger("jinsuan.agent")

SPOOL_FILE = "spool.sqlite"
_IDENT: TypeAdapter[str] = TypeAdapter(Ident)


class StartupError(Exception):
    """A configured probe could not be started (its library missing, a bad address...)."""


# -- probes ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ProbeSlot:
    """A started probe with its per-cycle deadline and its read still running, if any."""

    name: str
    probe: Probe
    deadline_s: float
    spec: ProbeSpec | None = None
    running: Future[Reading] | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    name: str
    reading: Reading | None  # None: no result this cycle (timeout, still busy, crashed)
    duration_s: float
    errors: tuple[str, ...]
    timed_out: bool = False


def start_probes(config: AgentConfig) -> list[ProbeSlot]:
    """Build every enabled probe; a probe that cannot start is a StartupError naming its key."""
    slots: list[ProbeSlot] = []
    problems: list[str] = []
    for spec in config.probes:
        if not spec.enabled:
            log.info("%s is disabled in the config", spec.key)
            continue
        try:
            probe = spec.build()
        except Exception as exc:  # a probe's constructor may raise anything its library does
            problems.append(f"{config.path}:{spec.key}: cannot start: {exc}")
            continue
        slots.append(ProbeSlot(probe.name, probe, spec.deadline_s, spec))
    if problems:
        raise StartupError("\n".join(problems))
    _unique_names(slots)
    return slots


def _unique_names(slots: list[ProbeSlot]) -> None:
    """Two probes of one kind may share a name; number them so metrics and logs tell them apart."""
    seen: dict[str, int] = {}
    for slot in slots:
        count = seen.get(slot.name, 0) + 1
        seen[slot.name] = count
        if count > 1:
            slot.name = f"{slot.name}-{count}"


def read_probes(slots: Sequence[ProbeSlot], now: datetime) -> list[ProbeResult]:
    """Read all probes concurrently; each gets its own deadline from the common start."""
    started, cpu_started = time.monotonic(), time.process_time()
    launched: list[tuple[ProbeSlot, Future[Reading] | None]] = []
    for slot in slots:
        if slot.running is not None and not slot.running.done():
            launched.append((slot, None))
            continue
        slot.running = _in_thread(slot, now)
        launched.append((slot, slot.running))
    results = []
    for slot, future in launched:
        if future is None:
            results.append(ProbeResult(
                slot.name, None, 0.0,
                ("skipped: its read from an earlier cycle is still running",), timed_out=True))
            continue
        remaining = slot.deadline_s - (time.monotonic() - started)
        try:
            reading = future.result(timeout=max(0.0, remaining))
        except FutureTimeout:
            slow = _who_was_slow(time.monotonic() - started, time.process_time() - cpu_started)
            results.append(ProbeResult(
                slot.name, None, slot.deadline_s,
                (f"no result within its deadline of {slot.deadline_s:g}s; abandoned: {slow}",),
                timed_out=True))
            continue
        except Exception as exc:
            reading, failure = None, f"read failed: {type(exc).__name__}: {exc}"
        else:
            failure = None
        duration = time.monotonic() - started
        errors = (failure,) if failure else tuple(reading.errors if reading else ())
        results.append(ProbeResult(slot.name, reading, duration, errors))
    return results


def _who_was_slow(wall_s: float, cpu_s: float) -> str:
    """Whether a probe that missed its deadline waited on its devices or on the agent itself.

    The agent's CPU time over the same span tells them apart: waiting on a silent device or a
    slow network costs next to no CPU, while an agent busy compiling MIBs or decoding uses up
    to a core (its Python threads share one), less on a crowded host; blaming the devices then
    would send the operator to look at healthy ones. A quarter of a core is far above waiting.
    """
    usage = f"{cpu_s:.1f} s of CPU in {wall_s:.1f} s"
    if cpu_s >= 0.25 * wall_s:
        return (f"the agent itself was slow, not necessarily the devices (it used {usage}: "
                "computing, not waiting)")
    return f"the agent was mostly idle ({usage}): it was waiting on the devices or the network"


def _in_thread(slot: ProbeSlot, now: datetime) -> Future[Reading]:
    """Run ``slot.probe.read(now)`` on a fresh daemon thread (a stuck one must not block exit)."""
    future: Future[Reading] = Future()
    future.set_running_or_notify_cancel()

    def target() -> None:
        try:
            future.set_result(slot.probe.read(now))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name=f"probe-{slot.name}", daemon=True).start()
    return future


# -- one cycle's batch -----------------------------------------------------------------------


@dataclass(slots=True)
class Assembled:
    """A cycle's readings merged: series, inventory, and what had to be left out and why."""

    series: list[Series]
    inventory: Inventory
    latest: dict[tuple[str, str], float]
    discarded: dict[str, list[str]] = field(default_factory=dict)  # probe -> reasons


def assemble(
    results: Sequence[ProbeResult], site_racks: Sequence[str], unix_ms: int
) -> Assembled:
    """Merge every probe's points into series ``(metric, device) -> [(unix_ms, value)]``.

    A point the platform would refuse (unknown metric, malformed device id, implausible value)
    is left out here and reported against its probe: the platform validates a batch whole, so
    one mis-scaled meter would otherwise cost the whole cycle of every device at the site.
    """
    latest: dict[tuple[str, str], float] = {}
    owner: dict[tuple[str, str], str] = {}
    discarded: dict[str, list[str]] = {}
    racks: dict[str, None] = dict.fromkeys(site_racks)
    accelerators: dict[str, AcceleratorInfo] = {}
    meters: dict[str, MeterInfo] = {}
    edge = False
    for result in results:
        if result.reading is None:
            continue
        reading = result.reading
        for point in reading.points:
            reason = _refuse(point)
            key = (point.metric, point.device)
            if reason is None and key in owner:
                reason = f"{point.metric}{{{point.device}}} already read by {owner[key]}"
            if reason is not None:
                discarded.setdefault(result.name, []).append(reason)
                continue
            latest[key] = float(point.value)
            owner[key] = result.name
        for rack in reading.racks:
            if _valid_ident(rack):
                racks.setdefault(rack)
            else:
                discarded.setdefault(result.name, []).append(f"rack id {rack!r} is malformed")
        for accelerator in reading.accelerators:
            accelerators.setdefault(accelerator.uuid, accelerator)
        for meter in reading.meters:
            meters.setdefault(meter.id, meter)
        edge = edge or reading.edge
    series = [
        Series.model_construct(metric=metric, device=device, points=[(unix_ms, value)])
        for (metric, device), value in latest.items()
    ]
    inventory = Inventory(racks=list(racks), accelerators=list(accelerators.values()),
                          meters=list(meters.values()), edge=edge)
    return Assembled(series, inventory, latest, discarded)


def _refuse(point: Point) -> str | None:
    metric = CATALOGUE.get(point.metric)
    if metric is None:
        return f"unknown metric {point.metric!r}"
    if not _valid_ident(point.device):
        return f"{point.metric}: device id {point.device!r} is malformed"
    try:
        value = float(point.value)
    except (TypeError, ValueError):
        return f"{point.metric}{{{point.device}}}: {point.value!r} is not a number"
    why = metric.check(value)
    return f"{point.metric}{{{point.device}}}: {why}" if why else None


def _valid_ident(value: str) -> bool:
    try:
        _IDENT.validate_python(value)
    except ValidationError:
        return False
    return True


# -- the agent -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CycleReport:
    seq: int | None  # None when nothing was spooled (no points read, or the spool full)
    unix_ms: int
    series: int
    results: tuple[ProbeResult, ...]


class Agent:
    """The sampling loop; owns the uploader thread while ``run`` is running."""

    def __init__(
        self,
        config: AgentConfig,
        identity: Identity,
        spool: Spool,
        probes: Sequence[ProbeSlot],
        *,
        metrics: AgentMetrics | None = None,
        clock: Clock | None = None,
        uploader: Uploader | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.spool = spool
        self.probes = list(probes)
        self.metrics = metrics or AgentMetrics(config.site.name)
        self.clock = clock or SystemClock()
        self.uploader = uploader
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self._stop.set()
        if self.uploader is not None:
            self.uploader.stop()

    def run(self) -> None:
        """Sample on the interval grid until ``stop``; then stop the uploader and return."""
        uploader_thread = None
        if self.uploader is not None:
            uploader_thread = threading.Thread(
                target=self.uploader.run, name="uploader", daemon=True)
            uploader_thread.start()
        try:
            self._loop()
        finally:
            if self.uploader is not None and uploader_thread is not None:
                self.uploader.stop()
                uploader_thread.join(self.config.agent.upload_timeout_s + 5)
                if uploader_thread.is_alive():
                    log.warning("abandoning an upload still in flight; the spool keeps it")

    def _loop(self) -> None:
        interval = self.config.agent.interval_s
        wall, mono = self.clock.time(), self.clock.monotonic()
        due = mono + (math.ceil(wall / interval) * interval - wall)
        while not self.clock.wait(self._stop, due - self.clock.monotonic()):
            try:
                self.cycle()
            except Exception:  # a cycle must never end the loop: log and sample again
                log.exception("sampling cycle failed")
            due += interval
            late = self.clock.monotonic() - due
            if late >= 0:
                missed = math.floor(late / interval) + 1
                due += missed * interval
                self.metrics.cycles_missed.inc(missed)
                log.warning("cycle overran: skipping %d tick(s)", missed)

    def cycle(self) -> CycleReport:
        """Read every probe once and spool the batch.

        A cycle in which no probe produced a single point spools nothing: there is no
        measurement to report, and the gap is what the platform should see (the probe failures
        are logged and on /metrics).
        """
        unix_ms = round(self.clock.time() * 1000)
        now = datetime.fromtimestamp(unix_ms / 1000, UTC)
        results = read_probes(self.probes, now)
        merged = assemble(results, self.config.site.racks, unix_ms)
        self._account(results, merged)
        self.metrics.latest.update(merged.latest, merged.inventory)
        self.metrics.cycles.inc()
        if not merged.series:
            log.warning("cycle read nothing from any probe; no batch spooled")
            return CycleReport(None, unix_ms, 0, tuple(results))
        agent_id, key = self.identity.agent_id, self.identity.key

        def body_for(seq: int) -> bytes:
            batch = Batch(agent_id=agent_id, seq=seq, created_at=now,
                          interval_s=self.config.agent.interval_s,
                          inventory=merged.inventory, series=merged.series)
            return seal(agent_id, key, batch.model_dump_json().encode())

        try:
            seq: int | None = self.spool.append(body_for)
        except SpoolFull as exc:
            log.error("%s", exc)
            self.metrics.batches_not_spooled.labels("spool_full").inc()
            seq = None
        else:
            self.metrics.batches_spooled.inc()
            if self.uploader is not None:
                self.uploader.notify()
        self.metrics.spool_pending.set(self.spool.pending())
        self.metrics.spool_pending_bytes.set(self.spool.pending_bytes())
        return CycleReport(seq, unix_ms, len(merged.series), tuple(results))

    def _account(self, results: Sequence[ProbeResult], merged: Assembled) -> None:
        m = self.metrics
        for result in results:
            m.probe_duration.labels(result.name).set(result.duration_s)
            dropped = merged.discarded.get(result.name, [])
            problems = len(result.errors) + len(dropped)
            m.probe_success.labels(result.name).set(0 if problems or not result.reading else 1)
            if result.timed_out:
                m.probe_timeouts.labels(result.name).inc()
            if result.errors:
                m.probe_errors.labels(result.name).inc(len(result.errors))
                for error in result.errors:
                    log.warning("probe %s: %s", result.name, error)
            if dropped:
                m.points_discarded.labels(result.name).inc(len(dropped))
                for reason in dropped:
                    log.warning("probe %s: point left out: %s", result.name, reason)


# -- entry points ----------------------------------------------------------------------------


@contextmanager
def running_agent(config: AgentConfig, *, clock: Clock | None = None) -> Iterator[Agent]:
    """Start the agent (sampling, uploads, /metrics) in background threads; stop it on exit.

    Raises IdentityError if the agent is not enrolled and StartupError if a probe cannot start,
    both before anything is sampled. Leaving the block stops sampling, lets an upload in
    flight finish (or leaves it in the spool), and closes the probes and the spool.
    """
    settings = config.agent
    identity = load_identity(settings.state_dir)
    if identity.enrolment.platform_url != settings.platform_url:
        log.warning("enrolled with %s but configured to send to %s",
                    identity.enrolment.platform_url, settings.platform_url)
    probes = start_probes(config)
    metrics = AgentMetrics(config.site.name)
    clock = clock or SystemClock()
    with ExitStack() as stack:
        stack.callback(_close_probes, probes)
        spool = stack.enter_context(Spool(settings.state_dir / SPOOL_FILE,
                                          settings.spool_max_bytes))
        uploader = Uploader(
            spool, settings.platform_url, metrics=metrics, clock=clock,
            backoff=Backoff(settings.backoff_base_s, max(settings.backoff_cap_s,
                                                          settings.backoff_base_s)),
            timeout_s=settings.upload_timeout_s, key=identity.key)
        stack.callback(uploader.close)
        agent = Agent(config, identity, spool, probes, metrics=metrics, clock=clock,
                      uploader=uploader)
        if config.executor is not None:
            stack.enter_context(_leasing(config, identity, clock))
        if settings.metrics_listen:
            host, port = parse_listen(settings.metrics_listen)
            server = serve(metrics, host, port)
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            log.info("serving /metrics on %s", settings.metrics_listen)
        log.info("agent %s for site %r: %d probe(s), every %gs, sending to %s, %d batch(es) "
                 "pending", identity.agent_id, config.site.name, len(probes),
                 settings.interval_s, settings.platform_url, spool.pending())
        thread = threading.Thread(target=agent.run, name=f"agent-{config.site.name}",
                                  daemon=True)
        thread.start()
        try:
            yield agent
        finally:
            agent.stop()
            thread.join()
    log.info("agent stopped")


@contextmanager
def _leasing(config: AgentConfig, identity: Identity, clock: Clock) -> Iterator[None]:
    """Lease jobs placed on this site and run them on the configured executor."""
    from agents.executors import ExecutorConfigError, UnknownExecutor
    from agents.worker import build_worker

    assert config.executor is not None
    try:
        worker = build_worker(config.executor, platform_url=config.agent.platform_url,
                              agent_id=identity.agent_id, key=identity.key,
                              state_dir=config.agent.state_dir, clock=clock)
    except (ExecutorConfigError, UnknownExecutor) as exc:
        raise StartupError(f"executor: {exc}") from None
    thread = threading.Thread(target=worker.run, name="lease-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join()
        worker.close()


def run_agent(config: AgentConfig, *, clock: Clock | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``KeyboardInterrupt``)."""
    stopped = threading.Event()
    with running_agent(config, clock=clock), _stop_on_signals(stopped.set):
        while not stopped.wait(1.0):
            pass


def _close_probes(slots: Sequence[ProbeSlot]) -> None:
    """Close the probes that hold connections or sessions (SNMP engines, Redfish sessions)."""
    for slot in slots:
        close = getattr(slot.probe, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing probe %s failed", slot.name)


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What ``jinsuan agent check`` shows for one configured probe section."""

    probe: str  # the probe's name ("modbus", "snmp-2", ...)
    key: str  # its place in the config, "probes.modbus[0]"
    source: str  # where it reads from: addresses, URLs, files
    enabled: bool
    ok: bool
    duration_s: float
    points: tuple[Point, ...] = ()
    accelerators: tuple[AcceleratorInfo, ...] = ()
    meters: tuple[MeterInfo, ...] = ()
    racks: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def check_sources(config: AgentConfig) -> list[SourceResult]:
    """Read every configured probe once, concurrently, without spooling or sending anything.

    Never raises for a probe's failure: a probe that cannot start or read is reported with why.
    """
    out: dict[str, SourceResult] = {}
    slots: list[ProbeSlot] = []
    for spec in config.probes:
        where = describe_source(spec.raw) or spec.kind
        if not spec.enabled:
            out[spec.key] = SourceResult(spec.kind, spec.key, where, False, True, 0.0,
                                         errors=("disabled in the config",))
            continue
        try:
            probe = spec.build()
        except Exception as exc:
            out[spec.key] = SourceResult(spec.kind, spec.key, where, True, False, 0.0,
                                         errors=(f"cannot start: {exc}",))
            continue
        slots.append(ProbeSlot(probe.name, probe, spec.deadline_s, spec))
    _unique_names(slots)
    now = datetime.now(UTC)
    unix_ms = round(now.timestamp() * 1000)
    try:
        results = read_probes(slots, now)
    finally:
        _close_probes(slots)
    shared = _shared_devices(results)
    for slot, result in zip(slots, results, strict=True):
        assert slot.spec is not None
        reading = result.reading or Reading()
        dropped = assemble([result], (), unix_ms).discarded.get(result.name, [])
        errors = (*result.errors, *(f"left out: {reason}" for reason in dropped),
                  *shared.get(result.name, ()))
        out[slot.spec.key] = SourceResult(
            slot.name, slot.spec.key, describe_source(slot.spec.raw) or slot.spec.kind, True,
            result.reading is not None and not errors, result.duration_s,
            tuple(reading.points), tuple(reading.accelerators), tuple(reading.meters),
            tuple(reading.racks), errors)
    return [out[spec.key] for spec in config.probes]


def _shared_devices(results: Sequence[ProbeResult]) -> dict[str, list[str]]:
    """Problems for probes that report a meter or accelerator id another probe also reports:
    a running agent would keep one of them and drop the other every cycle, so check refuses
    it, naming both."""
    owners: dict[tuple[str, str], list[str]] = {}
    for result in results:
        reading = result.reading or Reading()
        for kind, ids in (("meter", {m.id for m in reading.meters}),
                          ("accelerator", {a.uuid for a in reading.accelerators})):
            for device in ids:
                owners.setdefault((kind, device), []).append(result.name)
    problems: dict[str, list[str]] = {}
    for (kind, device), names in sorted(owners.items()):
        if len(names) > 1:
            for name in names:
                others = ", ".join(n for n in names if n != name)
                problems.setdefault(name, []).append(
                    f"{kind} id {device!r} is also reported by {others}: give each its own id")
    return problems


_PLACE_KEYS = ("url", "base_url", "endpoint", "address", "path", "file", "command")


def describe_source(section: Mapping[str, Any]) -> str:
    """Addresses a probe section names (``host:port``, URLs, files), comma-separated."""
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            host = value.get("host")
            if isinstance(host, str):
                port = value.get("port")
                found.setdefault(f"{host}:{port}" if port is not None else host)
            for key in _PLACE_KEYS:
                if isinstance(value.get(key), str):
                    found.setdefault(value[key])
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(section)
    return ", ".join(found)


def main(
    argv: Sequence[str] | None = None, kinds: Mapping[str, tuple[str, str]] = PROBE_KINDS
) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.daemon",
                                     description="Run the jinsuan site agent.")
    parser.add_argument("--config", required=True, type=Path, help="the agent's TOML config")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, kinds)
        run_agent(config)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    except (IdentityError, StartupError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
