"""Agent durability: the real agent process against a real receiver, through outages and SIGKILL.

The agent runs as a subprocess (``python -m tests.agent_harness``, i.e. ``agents.daemon.main``
with the journal probe registered) with a short interval: what matters is how many cycles an
outage spans, not wall time. The journal probe writes each read's time to a journal (fsynced)
before the agent sees it, so the test knows every sample the agent was handed. The receiver
verifies signatures, checks every value, and stores each ``(agent, seq)`` once, answering
``duplicate`` to a resend, as the platform does.

What is proved, for every scenario:
* the seqs the receiver stored are exactly 1..N with nothing rejected, and first arrived in that
  order (oldest first);
* no sample is stored twice, and every sample stored is one the probe produced;
* every sample produced arrived, except a read that SIGKILL caught before its batch reached the
  spool: it is at most the last read before each kill (checked against the spool itself), which
  is the agent's stated guarantee (a batch is durable once spooled);
* after the last batch is acknowledged and the agent is stopped with SIGTERM, it exits 0 and its
  spool is empty.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.identity import enrol, load_identity
from agents.spool import Spool
from agents.uploader import seal, unseal
from jinsuan.contract.wire import Batch
from tests.agent_peers import JournalBatch, Receiver, Rule, journal_reads, power_at, summarize

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOKEN = "jse_" + "d" * 32
MIB = 1 << 20


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90,
               alive: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` or if the agent died."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"agent exited with {alive.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Site:
    tmp: Path
    receiver: Receiver
    devices: int
    max_reads: int
    interval_s: float = 0.02
    lost: set[int] = field(default_factory=set)  # reads SIGKILL caught before they were spooled
    kills: int = 0
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def __post_init__(self) -> None:
        self.state = self.tmp / "state"
        self.journal = self.tmp / "journal.txt"
        self.config = self.tmp / "site.toml"
        self.receiver.add_token(TOKEN)
        self.agent_id = enrol(self.state, self.receiver.url, TOKEN).agent_id
        self.config.write_text(f"""
[site]
name = "durability-test"
racks = ["R1"]

[agent]
platform_url = "{self.receiver.url}"
state_dir = "{self.state}"
interval_s = {self.interval_s}
metrics_listen = ""
backoff_base_s = 0.01
backoff_cap_s = 0.05
upload_timeout_s = 20

[[probes.journal]]
deadline_s = 10  # a slow fsync must not turn a journaled read into an abandoned one
path = "{self.journal}"
devices = {self.devices}
max_reads = {self.max_reads}
""", encoding="utf-8")

    # the agent process
    def start(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        log = open(self.tmp / f"agent-{self.runs}.log", "wb")  # noqa: SIM115 (lives with proc)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.agent_harness", "--config", str(self.config),
             "--log-level", "WARNING"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        log.close()
        return self.proc

    def reads(self) -> list[int]:
        return journal_reads(self.journal)

    def wait_reads(self, n: int) -> None:
        wait_until(lambda: len(self.reads()) >= n, f"{n} probe reads", alive=self.proc)

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1
        reads = self.reads()
        kept = self.stored_times() | self.spooled_times()
        lost = set(reads) - kept - self.lost
        # Only the read in progress when the process died may be missing from both.
        assert lost <= {reads[-1]}, f"reads lost by SIGKILL: {sorted(lost)}"
        self.lost |= lost

    def sigterm(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def log_tail(self) -> str:
        return (self.tmp / f"agent-{self.runs}.log").read_text(errors="replace")[-3000:]

    # what ended up where
    def stored(self) -> dict[int, JournalBatch]:
        with self.receiver.lock:
            return {seq: b for (agent, seq), b in self.receiver.state.stored.items()
                    if agent == self.agent_id}

    def stored_times(self) -> set[int]:
        return {t for b in self.stored().values() for t in b.times}

    def spooled_times(self) -> set[int]:
        with Spool(self.state / "spool.sqlite") as spool:
            records = spool.oldest(100_000)
        times: set[int] = set()
        for record in records:
            batch = Batch.model_validate_json(gzip.decompress(unseal(record.body).gzip_body))
            times |= {t for s in batch.series for t, _ in s.points}
        return times

    def wait_drained(self) -> None:
        """All reads done and every read that reached the spool stored by the receiver."""
        self.wait_reads(self.max_reads)
        expected = set(self.reads()) - self.lost
        try:
            wait_until(lambda: self.stored_times() >= expected, "the receiver to have every read",
                       alive=self.proc)
        except AssertionError as exc:
            missing = sorted(expected - self.stored_times())
            raise AssertionError(f"{exc}; missing reads {missing[:10]} of {len(expected)}, "
                                 f"seqs stored {sorted(self.stored())}, last arrivals "
                                 f"{self.receiver.state.arrivals[-5:]}") from None

    def assert_exactly_once(self, extra_times: frozenset[int] | set[int] = frozenset()) -> None:
        stored = self.stored()
        seqs = sorted(stored)
        assert seqs == list(range(1, len(seqs) + 1)), "a seq is missing"
        assert self.receiver.first_arrival_order(self.agent_id) == seqs, "not oldest first"
        rejected = [a for a in self.receiver.state.arrivals if a.answer not in (0, 200)]
        assert rejected == []
        assert all(b.wrong == 0 for b in stored.values()), "a value changed on the way"
        times = [t for b in stored.values() for t in b.times]
        assert len(times) == len(set(times)), "a sample was stored twice"
        assert all(b.samples == len(b.times) * self.devices or b.times[0] in extra_times
                   for b in stored.values())
        produced = set(self.reads()) | set(extra_times)
        assert set(times) == produced - self.lost
        assert len(self.lost) <= self.kills

    def assert_spool_empty_after_sigterm(self) -> None:
        rc = self.sigterm()
        assert rc == 0, self.log_tail()
        with Spool(self.state / "spool.sqlite") as spool:
            assert spool.pending() == 0
            assert spool.rejected() == []


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    peer = Receiver(keep=summarize).start()
    yield peer
    peer.release.set()
    peer.stop()


@pytest.fixture
def cleanup() -> Iterator[list[Site]]:
    sites: list[Site] = []
    yield sites
    for site in sites:
        if site.proc is not None and site.proc.poll() is None:
            site.proc.kill()
            site.proc.wait(30)


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def seed_backlog(site: Site, batches: int, devices: int) -> tuple[set[int], int]:
    """Put a long outage's worth of large batches in the agent's spool before it starts.

    Device ids carry long random-looking suffixes (GPU UUIDs are random too, if shorter), so
    gzip cannot shrink the batches much: the stored backlog is large while the receiver's work,
    which grows with the number of series, stays small. Returns the read times and bytes.
    """
    identity = load_identity(site.state)
    names = [f"GPU-{i:04d}-{hashlib.sha512(str(i).encode()).hexdigest()[:96]}"
             for i in range(devices)]
    heads = [f'{{"metric":"accelerator_power_watts","device":"{n}","points":[[' for n in names]
    start_ms = 1_600_000_000_000
    times = set()
    with Spool(site.state / "spool.sqlite") as spool:
        for k in range(batches):
            ts = start_ms + k * 10_000
            times.add(ts)

            def body(seq: int, ts: int = ts) -> bytes:
                series = ",".join(f"{head}{ts},{power_at(ts, i)!r}]]}}"
                                  for i, head in enumerate(heads))
                text = (f'{{"agent_id":"{identity.agent_id}","seq":{seq},'
                        f'"created_at":"2020-09-13T12:26:40Z","interval_s":10.0,'
                        f'"inventory":{{"racks":["R1"]}},"series":[{series}]}}')
                return seal(identity.agent_id, identity.key, text.encode())

            spool.append(body)
        return times, spool.pending_bytes()


def test_long_outage_then_back_every_seq_once_in_order_with_bounded_memory(
    tmp_path, receiver, cleanup
):
    """(a) The receiver is down for hundreds of cycles on top of a large spooled backlog."""
    site = Site(tmp_path, receiver, devices=8, max_reads=400)
    cleanup.append(site)
    seeded_times, seeded_bytes = seed_backlog(site, batches=330, devices=2000)
    assert seeded_bytes >= 40 * MIB
    receiver.stop()  # down before the agent starts
    proc = site.start()
    site.wait_reads(5)
    warm = rss_kib(proc.pid)["VmRSS"]
    site.wait_reads(300)  # 300 cycles with the receiver down
    assert site.stored() == {}
    receiver.start()
    site.wait_reads(site.max_reads)
    expected = set(site.reads()) | seeded_times
    wait_until(lambda: site.stored_times() >= expected, "the backlog to drain", timeout=180,
               alive=proc)
    peak = rss_kib(proc.pid)["VmHWM"]
    site.assert_exactly_once(seeded_times)
    # Bounded memory: draining a >= 40 MiB stored backlog (hundreds of MiB as JSON) raised the
    # agent's peak resident memory by less than 16 MiB over its warm size.
    assert (peak - warm) * 1024 < 16 * MIB, f"warm {warm} KiB, peak {peak} KiB"
    site.assert_spool_empty_after_sigterm()


def test_sigkill_mid_upload_then_restart_every_sample_once(tmp_path, receiver, cleanup):
    """(b) The receiver commits batch 10, then holds the answer until the agent is killed."""
    site = Site(tmp_path, receiver, devices=16, max_reads=80)
    cleanup.append(site)
    receiver.add_rule(Rule("hold", count=1, seqs=frozenset({10})))
    site.start()
    wait_until(receiver.held.is_set, "the upload of batch 10 to be in flight", alive=site.proc)
    site.sigkill()
    receiver.release.set()
    assert 10 in site.stored()  # the platform had it; the agent never heard
    site.start()
    site.wait_drained()
    answers = [(a.seq, a.status) for a in receiver.state.arrivals if a.seq == 10]
    assert answers == [(10, "held"), (10, "duplicate")]
    site.assert_exactly_once()
    site.assert_spool_empty_after_sigterm()


def test_outage_and_sigkill_mid_upload_together(tmp_path, receiver, cleanup):
    """(c) Down for a stretch, back, agent killed mid-upload of the backlog, down again while
    the agent restarts and keeps sampling, then back for good."""
    site = Site(tmp_path, receiver, devices=16, max_reads=200)
    cleanup.append(site)
    receiver.stop()
    site.start()
    site.wait_reads(60)
    receiver.add_rule(Rule("hold", count=1, seqs=frozenset({25})))
    receiver.start()
    wait_until(receiver.held.is_set, "the upload of batch 25 to be in flight", alive=site.proc)
    site.sigkill()
    receiver.stop()
    receiver.release.set()
    stored_before = len(site.stored())
    site.start()
    site.wait_reads(len(site.reads()) + 60)  # a second outage of 60 cycles, after restart
    assert len(site.stored()) == stored_before
    receiver.start()
    site.wait_drained()
    site.assert_exactly_once()
    assert [a.status for a in receiver.state.arrivals if a.seq == 25] == ["held", "duplicate"]
    site.assert_spool_empty_after_sigterm()
