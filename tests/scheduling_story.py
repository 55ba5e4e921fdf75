"""Five hours of scheduler activity on a fixed clock, and what happened in them, by hand.

The story is played through the scheduler's own code: jobs submitted, placement cycles, agents
leasing runs and reporting them (the lease protocol's handlers, given the agent that the
signature check would have named), a site that stops renewing its lease, a run that fails and
is retried at another site, successes with usage records and an adjustment, cancels in the
queue and while running. The tables below say what happened, in minutes from the story's
start, so that a test can work out any figure from them without reading the store.

Sites (all 8 × H100 at 312 TFLOPS): ty-1 (Taiyuan, 8.00 yuan/h) and ty-2 (Taiyuan, 10.00), two
halls of the data centre "Taiyuan DC 1" of enterprise Jinneng; dt-1 (Datong, 12.00) of Yungang.
Tenants t1 and t2; jobs A to H.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from jinsuan.contract.leasewire import HeldRun, LeaseRequest, RunEvent
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.store import Database
from scheduler.config import SchedulerConfig
from scheduler.cycle import run_cycle
from scheduler.jobs import cancel_job, submit_job
from scheduler.leases import handle_event, handle_lease
from scheduler.seed import PoolSpec, report, seed_site
from scheduler.spec import JobSpec
from scheduler.usage import record_adjustment

CFG = SchedulerConfig(lease_ttl_s=1200)  # leases last 20 minutes unrenewed
SITES = ("ty-1", "ty-2", "dt-1")
PRICES = {"ty-1": Decimal("8.00"), "ty-2": Decimal("10.00"), "dt-1": Decimal("12.00")}
CITY = {"ty-1": "Taiyuan", "ty-2": "Taiyuan", "dt-1": "Datong"}
LENGTH_MIN = 300

# Each stay in the queue: job, tenant, from and to minute, and the site it is tied to (that of
# the run whose end sent it back, else the one its spec pins; None for neither).
WAITS = [
    ("A", "t1", 5, 15, None), ("B", "t2", 5, 15, "dt-1"), ("C", "t1", 40, 45, None),
    ("C", "t1", 55, 130, "dt-1"), ("D", "t2", 62, 80, None), ("A", "t1", 70, 130, "ty-1"),
    ("E", "t2", 110, 130, "ty-2"), ("F", "t2", 190, LENGTH_MIN, "ty-1"),
    ("G", "t1", 195, 210, "dt-1"), ("H", "t1", 205, 210, "dt-1"),
]
TENANT = {"A": "t1", "B": "t2", "C": "t1", "D": "t2", "E": "t2", "F": "t2", "G": "t1", "H": "t1"}
# Job → (submitted, first placed, at site).
FIRST_PLACED = {"A": (5, 15, "ty-1"), "B": (5, 15, "dt-1"), "C": (40, 45, "dt-1"),
                "E": (110, 130, "ty-2"), "G": (195, 210, "dt-1"), "H": (205, 210, "dt-1")}
# Run (job letter and attempt) → (placed, at site).
PLACEMENTS = {"A1": (15, "ty-1"), "B1": (15, "dt-1"), "C1": (45, "dt-1"), "A2": (130, "ty-2"),
              "C2": (130, "ty-2"), "E1": (130, "ty-2"), "G1": (210, "dt-1"),
              "H1": (210, "dt-1")}
# Job → (ended, end state, site of its last run or None).
ENDS = {"D": (80, "cancelled", None), "B": (90, "succeeded", "dt-1"),
        "A": (160, "succeeded", "ty-2"), "C": (165, "succeeded", "ty-2"),
        "E": (170, "cancelled", "ty-2"), "H": (230, "failed", "dt-1")}
# Runs that sent their job back to the queue: run → (minute, site, 'lost' or 'failed').
REQUEUES = {"C1": (55, "dt-1", "failed"), "A1": (70, "ty-1", "lost")}
# Metered runs: run → (tenant, job, site, accelerators, start, end). B1's record is adjusted.
# Every run that held accelerators is metered: A1 (lost) and E1 (cancelled while running) to
# the last heartbeat that named them (45 and 150).
METERED = {"B1": ("t2", "B", "dt-1", 2, 21, 90), "C1": ("t1", "C", "dt-1", 2, 50, 55),
           "A2": ("t1", "A", "ty-2", 4, 136, 160), "C2": ("t1", "C", "ty-2", 2, 136, 165),
           "H1": ("t1", "H", "dt-1", 1, 216, 230), "A1": ("t1", "A", "ty-1", 4, 21, 45),
           "E1": ("t2", "E", "ty-2", 1, 136, 150)}
ADJUSTMENT = {"run": "B1", "energy kWh": Decimal("-0.100000"), "cost yuan": Decimal("-1.00")}
# dt-1's energy counters: every device reads these joules at these minutes.
DT1_COUNTERS = [(20, 1e6), (89, 2.8e6)]
# Queued and running at a moment: F waits to the end, G runs on.
QUEUED_AT_END, RUNNING_AT_END = {"F"}, {"G"}


@dataclass
class Site:
    name: str
    agent: SignedBy
    held: dict[str, int] = field(default_factory=dict)  # run id → fencing token


class Story:
    """Three sites and their agents; jobs and runs driven through the scheduler's functions."""

    def __init__(self, conn: psycopg.Connection, db: Database, start: datetime) -> None:
        self.conn, self.db, self.start = conn, db, start
        self.sites: dict[str, Site] = {}
        self.jobs: dict[str, str] = {}  # "A" → job id
        self.runs: dict[str, str] = {}  # "A1" → run id
        for name, enterprise in (("ty-1", "Jinneng"), ("ty-2", "Jinneng"), ("dt-1", "Yungang")):
            site_id, agent_id = seed_site(
                conn, db.partitions, name=name, city=CITY[name], enterprise=enterprise,
                now=start, pools=[PoolSpec("H100", 8, PRICES[name])])
            self.sites[name] = Site(name, SignedBy(agent_id, site_id))
        conn.execute("UPDATE sites SET data_centre = 'Taiyuan DC 1' WHERE name IN ('ty-1', 'ty-2')")

    def at(self, minutes: float) -> datetime:
        return self.start + timedelta(minutes=minutes)

    def site_id(self, name: str) -> int:
        return self.sites[name].agent.site_id

    def submit(self, label: str, minute: float, accelerators: int, *, retries: int = 0,
               **constraints: Any) -> None:
        spec = JobSpec(project="p", accelerators_per_task=accelerators, retries=retries,
                       constraints=constraints, payload={"command": ["true"]})
        self.jobs[label] = submit_job(self.conn, spec, TENANT[label], self.at(minute))

    def cycle(self, minute: float, reporting: tuple[str, ...] = ()) -> None:
        """A placement cycle, after the ``reporting`` sites' agents sent their telemetry."""
        for name in reporting:
            report(self.conn, self.db.partitions, self.site_id(name), self.at(minute))
        run_cycle(self.conn, CFG, self.at(minute))

    def lease(self, name: str, minute: float, **expect: str) -> None:
        """The site's lease request (a heartbeat renewing what it holds); ``expect`` names the
        runs it must be handed, run label → job label."""
        site = self.sites[name]
        request = LeaseRequest(
            agent_id=site.agent.agent_id, sent_at=self.at(minute), executor="process",
            free_slots=4, held=[HeldRun(run_id=r, fencing_token=t) for r, t in site.held.items()])
        reply = handle_lease(self.conn, site.agent, request, CFG, self.at(minute))
        assert sorted(reply.renewed) == sorted(site.held), f"{name} at {minute}: {reply}"
        by_job = {lease.job_id: lease for lease in reply.new}
        assert set(by_job) == {self.jobs[job] for job in expect.values()}, reply
        for run_label, job in expect.items():
            lease = by_job[self.jobs[job]]
            self.runs[run_label] = lease.run_id
            site.held[lease.run_id] = lease.fencing_token

    def event(self, name: str, run_label: str, state: str, minute: float, **fields: Any) -> None:
        site = self.sites[name]
        run_id = self.runs[run_label]
        event = RunEvent(agent_id=site.agent.agent_id, sent_at=self.at(minute),
                         fencing_token=site.held[run_id], state=state, at=self.at(minute),
                         **fields)
        ack = handle_event(self.conn, site.agent, run_id, event, CFG, self.at(minute))
        assert ack.status == "recorded", f"{run_label} {state}: {ack}"
        if state != "running":
            del site.held[run_id]

    def cancel(self, label: str, minute: float) -> None:
        cancel_job(self.conn, self.jobs[label], self.at(minute))

    def energy_counters(self, name: str, readings: list[tuple[float, float]]) -> None:
        site_id = self.site_id(name)
        self.conn.execute(
            "INSERT INTO series (site_id, metric, device) SELECT site_id,"
            " 'accelerator_energy_joules_total', uuid FROM accelerators WHERE site_id = %s",
            (site_id,))
        for minute, joules in readings:
            self.conn.execute(
                "INSERT INTO samples (ts, series_id, value) SELECT %s, id, %s FROM series"
                " WHERE site_id = %s AND metric = 'accelerator_energy_joules_total'",
                (self.at(minute), joules, site_id))

    def placed_at(self) -> dict[str, str]:
        """Where each run went, by label, as the store has it."""
        names = {s.agent.site_id: n for n, s in self.sites.items()}
        return {label: names[self.conn.execute("SELECT site_id FROM runs WHERE id = %s",
                                               (run_id,)).fetchone()[0]]
                for label, run_id in self.runs.items()}


def play(story: Story) -> Story:
    """Play the story; it checks the scheduler did what the tables above say it did."""
    s = story
    s.energy_counters("dt-1", DT1_COUNTERS)
    # Hour 0: A goes to the cheapest site; B is pinned to Datong.
    s.submit("A", 5, 4)
    s.submit("B", 5, 2, site="dt-1")
    s.cycle(15, reporting=SITES)
    s.lease("ty-1", 20, A1="A")
    s.lease("dt-1", 20, B1="B")
    s.event("ty-1", "A1", "running", 21)
    s.event("dt-1", "B1", "running", 21)
    s.lease("ty-1", 35)
    s.lease("dt-1", 35)
    # C prefers Datong; its run there fails and it is queued again for its one retry.
    s.submit("C", 40, 2, retries=1, cities=["Datong"])
    s.cycle(45, reporting=SITES)
    s.lease("ty-1", 45)  # ty-1's last word: its lease on A1 runs out at 01:05
    s.lease("dt-1", 50, C1="C")
    s.event("dt-1", "C1", "running", 50)
    s.event("dt-1", "C1", "failed", 55, exit_code=3)
    # Hour 1: no site sends telemetry, so the cycle only finds A1's lease expired.
    s.submit("D", 62, 1)
    s.lease("dt-1", 65)
    s.cycle(70)
    s.cancel("D", 80)  # cancelled while queued, never placed
    s.lease("dt-1", 85)
    s.event("dt-1", "B1", "succeeded", 90, exit_code=0, started_at=s.at(21), ended_at=s.at(90))
    s.submit("E", 110, 1, site="ty-2")
    # Hour 2: ty-2 takes A (not back to silent ty-1), C (not back to dt-1, where it failed), E.
    s.cycle(130, reporting=("ty-2", "dt-1"))
    s.lease("ty-2", 135, A2="A", C2="C", E1="E")
    for run in ("A2", "C2", "E1"):
        s.event("ty-2", run, "running", 136)
    s.lease("ty-2", 150)
    s.event("ty-2", "A2", "succeeded", 160, exit_code=0)
    s.event("ty-2", "C2", "succeeded", 165, exit_code=0)
    s.cancel("E", 170)  # cancelled while running
    # Hour 3: F waits for silent ty-1 to the end; G runs on; H fails with no retries left.
    s.submit("F", 190, 8, site="ty-1")
    s.submit("G", 195, 1, site="dt-1")
    s.submit("H", 205, 1, site="dt-1")
    s.cycle(210, reporting=("dt-1",))
    s.lease("dt-1", 215, G1="G", H1="H")
    s.event("dt-1", "G1", "running", 216)
    s.event("dt-1", "H1", "running", 216)
    s.event("dt-1", "H1", "failed", 230, exit_code=1)
    original = s.conn.execute("SELECT id FROM usage_records WHERE run_id = %s",
                              (s.runs[ADJUSTMENT["run"]],)).fetchone()[0]
    record_adjustment(s.conn, original, reason="meter recalibrated",
                      energy_kwh=ADJUSTMENT["energy kWh"], cost_yuan=ADJUSTMENT["cost yuan"])
    assert s.placed_at() == {run: site for run, (_, site) in PLACEMENTS.items()}
    return s
