"""The sampling loop: grid scheduling, per-probe deadlines, batch assembly, /metrics, check."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from agents.config import PROBE_KINDS, load_config
from agents.daemon import (
    Agent,
    ProbeResult,
    ProbeSlot,
    assemble,
    check_sources,
    describe_source,
    read_probes,
)
from agents.exporter import serve
from agents.identity import Enrolment, Identity
from agents.probe import Point, Reading
from agents.spool import Spool
from agents.uploader import unseal
from jinsuan.contract import signing
from jinsuan.contract.wire import AcceleratorInfo, Batch, MeterInfo, MeterRole
from tests.agent_peers import TEST_KINDS

CONFIG = """
[site]
name = "datong-edge"
racks = ["R1", "R2"]

[agent]
platform_url = "http://127.0.0.1:9"
state_dir = "state"
interval_s = 10
metrics_listen = ""
"""


class ManualClock:
    """Time moves only when the loop waits (or a probe says it took long)."""

    def __init__(self, start: float) -> None:
        self.t = start
        self.lock = threading.Lock()

    def time(self) -> float:
        with self.lock:
            return self.t

    def monotonic(self) -> float:
        return self.time()

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        self.advance(max(0.0, timeout))
        return event.is_set()


@dataclass
class ScriptedProbe:
    """Answers with points stamped from ``now``; can stop the agent or take simulated time."""

    name: str = "scripted"
    reads: list[datetime] = field(default_factory=list)
    on_read: object = None

    def read(self, now: datetime) -> Reading:
        self.reads.append(now)
        if callable(self.on_read):
            self.on_read(len(self.reads))
        return Reading(
            points=[Point("accelerator_power_watts", "GPU-1", 300.0 + len(self.reads)),
                    Point("meter_power_watts", "ups-a", 12_000.0)],
            accelerators=[AcceleratorInfo(uuid="GPU-1", model="NVIDIA H800", vendor="NVIDIA",
                                          rack="R1")],
            meters=[MeterInfo(id="ups-a", role=MeterRole.IT, measures="ups_output",
                              racks=["R1"])],
            racks=["R3"],
        )


@dataclass
class BlockingProbe:
    name: str = "stuck"
    gate: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def read(self, now: datetime) -> Reading:
        self.calls += 1
        self.gate.wait(30)
        return Reading(points=[Point("meter_power_watts", "slow-meter", 1.0)])


class FailingProbe:
    name = "failing"

    def read(self, now: datetime) -> Reading:
        raise ConnectionResetError("peer reset")


@pytest.fixture
def config(tmp_path: Path):
    path = tmp_path / "site.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return load_config(path)


@pytest.fixture
def identity() -> Identity:
    key = signing.new_private_key()
    enrolment = Enrolment("agt_1", 1, "datong-edge", "http://127.0.0.1:9",
                          signing.public_key_b64(key), "2025-01-01T00:00:00+00:00")
    return Identity(enrolment, key)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.sqlite") as s:
        yield s


def spooled_batches(spool: Spool, identity: Identity) -> list[Batch]:
    public = signing.load_public_key(identity.enrolment.public_key)
    out = []
    for record in spool.oldest(1000):
        sealed = unseal(record.body)
        body = gzip.decompress(sealed.gzip_body)
        assert signing.verify(public, body, sealed.signature)
        out.append(Batch.model_validate_json(body))
    return out


def test_cycles_land_on_the_interval_grid_and_skip_missed_ticks(config, identity, spool):
    clock = ManualClock(1_000_003.7)

    def script(n: int) -> None:
        if n == 2:
            clock.advance(25)  # this read takes 25 s: the ticks at +20 and +30 are missed
        if n == 5:
            agent.stop()

    probe = ScriptedProbe(on_read=script)
    agent = Agent(config, identity, spool, [ProbeSlot("scripted", probe, 5.0)], clock=clock)
    agent.run()
    stamps = [r.timestamp() for r in probe.reads]
    assert stamps == [1_000_010, 1_000_020, 1_000_050, 1_000_060, 1_000_070]
    samples = agent.metrics.registry.get_sample_value
    assert samples("jinsuan_agent_cycles_missed_total") == 2
    assert samples("jinsuan_agent_cycles_total") == 5
    assert [b.seq for b in spooled_batches(spool, identity)] == [1, 2, 3, 4, 5]


def test_one_batch_per_cycle_with_series_inventory_and_signature(config, identity, spool):
    clock = ManualClock(1_700_000_000.25)
    agent = Agent(config, identity, spool, [ProbeSlot("scripted", ScriptedProbe(), 5.0)],
                  clock=clock)
    report = agent.cycle()
    (batch,) = spooled_batches(spool, identity)
    assert (batch.seq, batch.agent_id, batch.interval_s) == (report.seq, "agt_1", 10)
    assert batch.created_at.timestamp() == 1_700_000_000.25
    points = {(s.metric, s.device): s.points for s in batch.series}
    assert points == {("accelerator_power_watts", "GPU-1"): [(1_700_000_000_250, 301.0)],
                      ("meter_power_watts", "ups-a"): [(1_700_000_000_250, 12_000.0)]}
    assert batch.inventory.racks == ["R1", "R2", "R3"]  # the site's racks, then the probes'
    assert [a.uuid for a in batch.inventory.accelerators] == ["GPU-1"]
    assert [m.id for m in batch.inventory.meters] == ["ups-a"]


def test_slow_probe_is_abandoned_others_still_report(config, identity, spool):
    stuck = BlockingProbe()
    agent = Agent(config, identity, spool, [ProbeSlot("stuck", stuck, 0.2),
                                            ProbeSlot("scripted", ScriptedProbe(), 5.0),
                                            ProbeSlot("failing", FailingProbe(), 5.0)],
                  clock=ManualClock(1_700_000_000))
    try:
        first = agent.cycle()
        second = agent.cycle()  # still stuck: skipped, not a second thread
        assert stuck.calls == 1
        stuck.gate.set()
        agent.probes[0].running.result(5)  # the abandoned read has now finished
        third = agent.cycle()
    finally:
        stuck.gate.set()
    assert stuck.calls == 2
    by_name = {r.name: r for r in first.results}
    assert by_name["stuck"].timed_out and by_name["stuck"].reading is None
    assert "deadline of 0.2s" in by_name["stuck"].errors[0]
    assert by_name["failing"].errors == ("read failed: ConnectionResetError: peer reset",)
    assert "still running" in {r.name: r for r in second.results}["stuck"].errors[0]
    batches = spooled_batches(spool, identity)
    assert [len(b.series) for b in batches] == [2, 2, 3]
    assert (first.series, third.series) == (2, 3)
    metric = agent.metrics.registry.get_sample_value
    assert metric("jinsuan_agent_probe_timeouts_total", {"probe": "stuck"}) == 2
    assert metric("jinsuan_agent_probe_errors_total", {"probe": "failing"}) == 3
    assert metric("jinsuan_agent_probe_success", {"probe": "scripted"}) == 1
    assert metric("jinsuan_agent_probe_success", {"probe": "failing"}) == 0


def test_assemble_leaves_out_points_the_platform_would_refuse():
    def result(name: str, *points: Point, racks: tuple[str, ...] = ()) -> ProbeResult:
        return ProbeResult(name, Reading(points=list(points), racks=list(racks)), 0.1, ())

    merged = assemble([
        result("a", Point("meter_power_watts", "m1", 5000.0),
               Point("meter_power_watts", "m2", 5e12),  # kW read as mW: implausible
               Point("meter_volts", "m1", 230.0),
               Point("accelerator_power_watts", "bad id", 10.0),
               Point("accelerator_power_watts", "GPU-1", float("nan")),
               racks=("R9", "no spaces")),
        result("b", Point("meter_power_watts", "m1", 6000.0),
               Point("site_racks", "site", 2.0)),
    ], ["R1"], 1000)
    assert merged.latest == {("meter_power_watts", "m1"): 5000.0, ("site_racks", "site"): 2.0}
    assert [(s.metric, s.device, s.points) for s in merged.series] == [
        ("meter_power_watts", "m1", [(1000, 5000.0)]), ("site_racks", "site", [(1000, 2.0)])]
    assert merged.inventory.racks == ["R1", "R9"]
    reasons_a = merged.discarded["a"]
    assert len(reasons_a) == 5
    assert any("above the plausible bound" in r for r in reasons_a)
    assert any("unknown metric 'meter_volts'" in r for r in reasons_a)
    assert any("not a finite number" in r for r in reasons_a)
    assert merged.discarded["b"] == ["meter_power_watts{m1} already read by a"]


def test_agent_metrics_expose_latest_device_values_with_inventory_labels(config, identity, spool):
    agent = Agent(config, identity, spool, [ProbeSlot("scripted", ScriptedProbe(), 5.0)],
                  clock=ManualClock(1_700_000_000))
    agent.cycle()
    agent.cycle()
    server = serve(agent.metrics, "127.0.0.1", 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert ('jinsuan_accelerator_power_watts{model="NVIDIA H800",rack="R1",uuid="GPU-1",'
            'vendor="NVIDIA"} 302.0') in text
    assert 'jinsuan_meter_power_watts{measures="ups_output",meter="ups-a",role="it"} 12000.0' \
        in text
    assert "jinsuan_agent_spool_pending_batches 2.0" in text
    assert "jinsuan_agent_batches_spooled_total 2.0" in text
    assert 'jinsuan_agent_probe_duration_seconds{probe="scripted"}' in text
    # Our own registry: nothing from the library's global default registry (process_, python_).
    assert "python_info" not in generate_latest(agent.metrics.registry).decode()


def test_read_probes_reports_each_probe_on_its_own_deadline():
    stuck = BlockingProbe()
    try:
        results = read_probes([ProbeSlot("stuck", stuck, 0.1),
                               ProbeSlot("scripted", ScriptedProbe(), 5.0)],
                              datetime.fromtimestamp(0).astimezone())
    finally:
        stuck.gate.set()
    assert [r.reading is None for r in results] == [True, False]
    assert results[1].reading is not None and len(results[1].reading.points) == 2


def test_check_sources_reads_once_and_explains_failures(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(CONFIG + f"""
[[probes.journal]]
path = "{tmp_path / 'journal.jsonl'}"
devices = 2

[[probes.broken]]

[[probes.simulated]]
enabled = false
""", encoding="utf-8")
    config = load_config(path, {**PROBE_KINDS, **TEST_KINDS})
    journal, broken, simulated = check_sources(config)
    assert journal.ok and journal.key == "probes.journal[0]"
    assert [p.device for p in journal.points] == ["GPU-0000", "GPU-0001"]
    assert journal.source == str(tmp_path / "journal.jsonl")
    assert not broken.ok
    assert broken.errors == ("cannot start: cannot load libnvidia-ml.so.1: no such file",)
    assert not simulated.enabled and simulated.errors == ("disabled in the config",)
    assert not (tmp_path / "state" / "spool.sqlite").exists()  # nothing spooled or sent


def test_describe_source_finds_hosts_urls_and_files():
    section = {"meters": [{"host": "10.0.0.5", "port": 502}, {"host": "10.0.0.6"}],
               "bmcs": [{"url": "https://bmc1"}], "path": "/var/run/terminals"}
    assert describe_source(section) == "/var/run/terminals, 10.0.0.5:502, 10.0.0.6, https://bmc1"


def test_check_refuses_two_probes_reporting_the_same_meter(tmp_path):
    """Two simulated sites in one config both report meters 'utility-main', 'ups-a', 'ups-b':
    a running agent would drop one probe's readings every cycle, so check fails both, naming
    the other."""
    path = tmp_path / "site.toml"
    path.write_text(CONFIG + """
[[probes.simulated]]
seed = 1
fleet = { "NVIDIA H800" = 2 }

[[probes.simulated]]
seed = 2
fleet = { "NVIDIA H800" = 2 }
""", encoding="utf-8")
    first, second = check_sources(load_config(path, {**PROBE_KINDS, **TEST_KINDS}))
    assert not first.ok and not second.ok
    assert f"meter id 'utility-main' is also reported by {second.probe}: give each its own id" \
        in first.errors
    assert f"meter id 'utility-main' is also reported by {first.probe}: give each its own id" \
        in second.errors
