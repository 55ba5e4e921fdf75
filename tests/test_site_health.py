"""Sites that stop leasing get nothing new, and failover inside half a minute, on a fixed clock.

Played through the scheduler's own functions, as tests/scheduling_story.py does: placement
cycles, the lease protocol's handlers (given the agent the signature check would have named) and
telemetry as ``scheduler.seed`` writes it, all at chosen instants, with the default settings
unless a test says otherwise. Times are seconds after ``T0``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from executor_kit import wait_for

from agents.worker import WorkerSettings, heartbeat_interval
from jinsuan.contract.leasewire import HeldRun, LeaseReply, LeaseRequest, RunEvent
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.errors import Conflict
from jinsuan.kernel.store import Database
from scheduler.config import SchedulerConfig
from scheduler.cycle import commit_decisions, run_cycle
from scheduler.jobs import submit_job
from scheduler.leases import handle_event, handle_lease
from scheduler.placement import explain, place
from scheduler.seed import PoolSpec, report, seed_site
from scheduler.snapshot import load_queue, load_snapshot
from scheduler.spec import JobSpec

CFG = SchedulerConfig()  # the defaults are what is promised
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
# How often the agent asks for work with its default settings, once it knows the TTL: 5 s.
INTERVAL = heartbeat_interval(WorkerSettings(kind="process").heartbeat_s, CFG.lease_ttl_s)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(tasks: int = 1, per_task: int = 1, image: str | None = None, **constraints) -> JobSpec:
    return JobSpec(project="p", tasks=tasks, accelerators_per_task=per_task,
                   constraints=constraints, payload={"command": ["true"], "image": image})


class Agent:
    """A site's agent: its lease requests and the runs it holds and reports on."""

    def __init__(self, conn: psycopg.Connection, db: Database, name: str, price: str,
                 executor: str = "process", size: int = 8) -> None:
        self.conn, self.db, self.name, self.executor = conn, db, name, executor
        site_id, agent_id = seed_site(conn, db.partitions, name=name, city="Taiyuan", now=T0,
                                      pools=[PoolSpec("H100", size, Decimal(price))],
                                      executor=executor)  # its agent reports and asks at T0
        self.signed = SignedBy(agent_id, site_id)
        self.held: dict[str, int] = {}  # run id → fencing token
        self.running: dict[str, datetime] = {}  # job id → when it reported the job running

    @property
    def site_id(self) -> int:
        return self.signed.site_id

    def telemetry(self, t: float) -> None:
        report(self.conn, self.db.partitions, self.site_id, at(t), leasing=False)

    def ask(self, t: float, *, keep: bool = True, processed: float | None = None,
            executor: str | None = None) -> LeaseReply:
        """A lease request arriving at ``t`` (answered at ``processed``, when the platform was
        slow to get to it). New runs are started and reported running at once, as the worker
        does in the same step, unless the agent does not ``keep`` what it takes."""
        request = LeaseRequest(
            agent_id=self.signed.agent_id, sent_at=at(t), executor=executor or self.executor,
            free_slots=4, held=[HeldRun(run_id=r, fencing_token=f) for r, f in self.held.items()])
        done = at(processed if processed is not None else t)
        reply = handle_lease(self.conn, self.signed, request, CFG, done, received_at=at(t))
        for run_id in reply.lost + reply.cancel:
            self.held.pop(run_id, None)
        for lease in reply.new if keep else ():
            self.held[lease.run_id] = lease.fencing_token
            event = RunEvent(agent_id=self.signed.agent_id, sent_at=done,
                             fencing_token=lease.fencing_token, state="running", at=done)
            handle_event(self.conn, self.signed, lease.run_id, event, CFG, done)
            self.running[lease.job_id] = done
        return reply


def cycle(conn: psycopg.Connection, t: float, *reporting: Agent):
    """A placement cycle at ``t``, after the ``reporting`` agents sent their telemetry."""
    for agent in reporting:
        agent.telemetry(t)
    return run_cycle(conn, CFG, at(t))


def site_of(conn: psycopg.Connection, job_id: str) -> tuple[str, int | None]:
    """The job's state, and the site of its live run (None without one)."""
    return conn.execute("SELECT j.state, r.site_id FROM jobs j LEFT JOIN runs r"
                        " ON r.id = j.current_run_id AND r.state IN ('placed', 'leased', 'running')"
                        " WHERE j.id = %s", (job_id,)).fetchone()


def why_not(conn: psycopg.Connection, job_id: str, t: float) -> dict[str, tuple[str, str]]:
    """Why the queued job is not placed, per site, at ``t`` (the API's why-not, on our clock)."""
    snapshot = load_snapshot(conn, CFG, at(t))
    return {v.site: (v.constraint, v.reason)
            for v in explain(load_queue(conn, job_id)[0], snapshot, CFG)}


def last_reason(conn: psycopg.Connection, job_id: str) -> str:
    return conn.execute("SELECT reason FROM job_transitions WHERE job_id = %s"
                        " ORDER BY id DESC LIMIT 1", (job_id,)).fetchone()[0]


# ---- sites that stop leasing -------------------------------------------------------------------

def test_a_site_whose_agent_stops_asking_gets_nothing_new_while_its_telemetry_goes_on(db, conn):
    """ty's lease loop dies after its request at 0 s; its telemetry goes on. For 15 s
    (lease_stale_s) it still gets work; after that only dt does, and the run ty was given and
    never took is lost at its TTL and runs at dt."""
    ty, dt = Agent(conn, db, "ty", "8.00"), Agent(conn, db, "dt", "12.00")
    first = submit_job(conn, spec(), "t1", at(14))
    dt.ask(14)
    cycle(conn, 14, ty, dt)
    assert site_of(conn, first) == ("placed", ty.site_id)  # asked 14 s ago: < 15 s, cheaper
    second = submit_job(conn, spec(), "t1", at(16))
    pinned = submit_job(conn, spec(site="ty"), "t1", at(16))
    dt.ask(16)
    cycle(conn, 16, ty, dt)
    assert site_of(conn, second) == ("placed", dt.site_id)
    assert site_of(conn, pinned) == ("queued", None)
    sites = {s.name: s for s in load_snapshot(conn, CFG, at(16)).sites}
    assert sites["ty"].reporting and not sites["ty"].leasing  # telemetry alone is not enough
    assert why_not(conn, pinned, 16)["ty"] == ("not_leasing",
                                               "its agent has not asked for work recently")
    # ty never took its run: placed at 14, its lease lapses at 14 + 20 = 34, found at 36.
    for t in range(18, 36, 2):
        dt.ask(t)
        cycle(conn, t, ty, dt)
    assert site_of(conn, first) == ("placed", ty.site_id)
    dt.ask(36)
    cycle(conn, 36, ty, dt)
    assert site_of(conn, first) == ("placed", dt.site_id)
    assert last_reason(conn, first).endswith("placed at dt")
    lost = conn.execute("SELECT reason FROM job_transitions WHERE job_id = %s AND"
                        " to_state = 'queued' AND from_state = 'placed'", (first,)).fetchone()[0]
    assert lost.endswith("expired: the site's agent last asked for work at 2026-03-02 08:00:00"
                         " UTC")
    health = conn.execute("SELECT silent_losses, last_loss_at FROM site_lease_health"
                          " WHERE site_id = %s", (ty.site_id,)).fetchone()
    assert health == (1, at(36))  # lost without a single event from ty


def test_an_agent_running_another_executor_is_refused_recorded_and_the_site_skipped(db, conn):
    """ty is registered with Slurm; its agent comes back running the process executor. Every
    request is refused, but recorded: the job placed before is lost at its TTL and says why,
    nothing new goes to ty, until the agent announces Slurm again."""
    ty = Agent(conn, db, "ty", "8.00", executor="slurm")
    early = submit_job(conn, spec(), "t1", at(0))
    cycle(conn, 0, ty)
    assert site_of(conn, early) == ("placed", ty.site_id)
    with pytest.raises(Conflict, match="registered with executor 'slurm', the agent runs"
                                       " 'process'"):
        ty.ask(5, executor="process")
    assert conn.execute("SELECT executor, last_lease_at FROM agent_leases WHERE agent_id = %s",
                        (ty.signed.agent_id,)).fetchone() == ("process", at(5))  # kept
    later = submit_job(conn, spec(), "t1", at(6))
    cycle(conn, 6, ty)
    assert site_of(conn, later) == ("queued", None)
    constraint, reason = why_not(conn, later, 6)["ty"]
    assert constraint == "executor_mismatch"
    assert reason.startswith("its agent runs the process executor but the site is registered"
                             " with slurm")
    for t in (10, 15, 20):
        with pytest.raises(Conflict):
            ty.ask(t, executor="process")
        cycle(conn, t, ty)
    # early's run was placed at 0 and never leased: its lease lapsed at 20, found at 22.
    cycle(conn, 22, ty)
    assert site_of(conn, early) == ("queued", None)
    assert last_reason(conn, early) == (
        f"lease of {conn.execute('SELECT id FROM runs WHERE job_id = %s', (early,)).fetchone()[0]}"
        " expired: the site's agent runs the process executor, the site is registered with"
        " slurm; its lease requests are refused")
    assert why_not(conn, early, 22)["ty"][0] == "executor_mismatch"
    # The agent is put right: its next request is answered, and the site is used again.
    assert ty.ask(25).new == []
    cycle(conn, 26, ty)
    assert {site_of(conn, j) for j in (early, later)} == {("placed", ty.site_id)}
    assert len(ty.ask(30).new) == 2
    assert set(ty.running) == {early, later}


def test_an_executor_gets_only_the_jobs_it_can_run(db, conn):
    """What a job needs is read from its stored spec: a gang (tasks > 1) and a payload image."""
    cheap = Agent(conn, db, "proc", "6.00", executor="process")
    slurm = Agent(conn, db, "slurm", "9.00", executor="slurm")
    kube = Agent(conn, db, "kube", "12.00", executor="kubernetes")
    single = submit_job(conn, spec(), "t1", at(0))
    gang = submit_job(conn, spec(tasks=2, per_task=2), "t1", at(0))
    boxed = submit_job(conn, spec(image="registry.example/train:1"), "t1", at(0))
    pinned_gang = submit_job(conn, spec(tasks=4, site="proc"), "t1", at(0))
    cycle(conn, 0, cheap, slurm, kube)
    assert {j: site_of(conn, j)[1] for j in (single, gang, boxed, pinned_gang)} == {
        single: cheap.site_id, gang: slurm.site_id, boxed: kube.site_id, pinned_gang: None}
    assert why_not(conn, pinned_gang, 0)["proc"] == (
        "gang", "the job is a gang of 4 tasks and the process executor runs its command once"
                " (gangs run on kubernetes, slurm)")


# ---- reservations ------------------------------------------------------------------------------

def test_a_reservation_is_dropped_when_the_sites_price_passes_the_jobs_cap(db, conn):
    """A gang of 8 waits for ty, where 6 of 8 are busy, and holds it; a small job pinned there
    is kept out. ty's price then rises over the gang's cap: the next cycle drops the hold and
    places the small job."""
    ty = Agent(conn, db, "ty", "10.00", executor="slurm")
    filler = submit_job(conn, spec(per_task=6, site="ty"), "t1", at(0))
    cycle(conn, 0, ty)  # the filler holds 6 of ty's 8 (its lease made to last the test)
    conn.execute("UPDATE runs SET lease_expires_at = %s WHERE job_id = %s", (at(3600), filler))
    gang = submit_job(conn, spec(per_task=8, max_price="11.00"), "t2", at(-600))
    small = submit_job(conn, spec(site="ty"), "t1", at(1))
    cycle(conn, 2, ty)  # the gang has waited 602 s, over reserve_after_s: it holds ty
    assert conn.execute("SELECT site_id, job_id FROM pool_reservations").fetchall() == [
        (ty.site_id, gang)]
    assert site_of(conn, small) == ("queued", None)
    assert why_not(conn, small, 2)["ty"][0] == "reserved"
    conn.execute("UPDATE site_prices SET yuan_per_accelerator_hour = 12.00 WHERE site_id = %s",
                 (ty.site_id,))
    cycle(conn, 4, ty)
    assert conn.execute("SELECT count(*) FROM pool_reservations").fetchone()[0] == 0
    assert site_of(conn, small) == ("placed", ty.site_id)


def test_two_cycles_holding_the_same_pool_at_once_both_commit(db, settings, conn):
    """Two platform processes decide on the same snapshot: both hold ty's busy pool for the
    waiting gang, and each places a different small job. The first has written its hold but not
    committed when the second writes the same hold; the second waits on it, then updates it.
    Neither cycle is rolled back on the pool's unique key."""
    ty = Agent(conn, db, "ty", "10.00", size=8)
    a = Agent(conn, db, "a", "10.00", size=1)
    b = Agent(conn, db, "b", "10.00", size=1)
    filler = submit_job(conn, spec(per_task=8, site="ty"), "t1", at(0))
    cycle(conn, 0, ty, a, b)
    conn.execute("UPDATE runs SET lease_expires_at = %s WHERE job_id = %s", (at(3600), filler))
    gang = submit_job(conn, spec(per_task=8), "t2", at(-600))
    first = submit_job(conn, spec(site="a"), "t1", at(1))
    second = submit_job(conn, spec(site="b"), "t1", at(1))
    other = Database.open(settings)
    try:
        with other.pool.connection() as conn2:
            snap1, snap2 = load_snapshot(conn, CFG, at(2)), load_snapshot(conn2, CFG, at(2))
            snap1.jobs = [j for j in snap1.jobs if j.id in (gang, first)]
            snap2.jobs = [j for j in snap2.jobs if j.id in (gang, second)]
            d1, d2 = place(snap1, CFG), place(snap2, CFG)
            assert [(r.site_id, r.job_id) for r in d1.reservations + d2.reservations] == [
                (ty.site_id, gang)] * 2
            outcome: dict[str, object] = {}

            def commit_second() -> None:
                try:
                    outcome["kept"] = commit_decisions(conn2, snap2, d2, CFG, at(2))
                except psycopg.Error as exc:
                    outcome["error"] = exc

            with conn.transaction():  # the first cycle's commit, held open
                kept1 = commit_decisions(conn, snap1, d1, CFG, at(2))
                thread = threading.Thread(target=commit_second)
                thread.start()
                wait_for(lambda: conn.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    (conn2.info.backend_pid,)).fetchone()[0], lambda w: w == "Lock")
            thread.join(timeout=30)
    finally:
        other.close()
    assert "error" not in outcome, outcome
    assert [p.job_id for p in kept1] == [first]
    assert [p.job_id for p in outcome["kept"]] == [second]
    assert {j: site_of(conn, j) for j in (first, second)} == {
        first: ("placed", a.site_id), second: ("placed", b.site_id)}
    assert conn.execute("SELECT site_id, job_id FROM pool_reservations").fetchall() == [
        (ty.site_id, gang)]


# ---- failover ----------------------------------------------------------------------------------

def test_the_default_settings_promise_failover_within_30_s():
    # Lease TTL, then at most a cycle to find it lapsed and place it elsewhere, then at most one
    # agent interval until that site's agent asks: 20 + 2 + 5 = 27 s.
    assert (CFG.lease_ttl_s, CFG.cycle_every_s, INTERVAL) == (20, 2, 5)
    assert CFG.lease_ttl_s + CFG.cycle_every_s + INTERVAL <= 30
    assert CFG.lease_stale_s < CFG.lease_ttl_s  # a dead site is skipped before its runs lapse


@pytest.mark.parametrize(("cycle_phase", "ask_phase"), [
    (0.0, 1.999),  # the worst case: a cycle at the very instant the lease lapses (not yet
                   # lapsed), and dt's agent asking just before the next cycle re-places the job
    (0.5, 2.5),
    (1.0, 0.0),
])
def test_a_dead_sites_job_runs_elsewhere_within_30_s_of_its_last_heartbeat(
        db, conn, cycle_phase, ask_phase):
    """ty runs the job and renews it every 5 s until its agent dies after its request at 30 s
    (its last heartbeat, L); its telemetry goes on. Cycles every 2 s and dt's agent every 5 s,
    at the given phases after L. The job must run at dt by L + 30 s, and not be taken from ty
    while ty still renewed it."""
    ty, dt = Agent(conn, db, "ty", "8.00"), Agent(conn, db, "dt", "12.00")
    job = submit_job(conn, spec(), "t1", at(0))
    cycle(conn, 0, ty, dt)
    ty.ask(0)
    last = 30.0
    events: list[tuple[float, int, str]] = []
    events += [(t, 2, "ty") for t in range(5, int(last) + 1, int(INTERVAL))]
    events += [(last + cycle_phase + k * CFG.cycle_every_s, 0, "cycle")
               for k in range(-15, 25)]
    events += [(last + ask_phase + k * INTERVAL, 1, "dt") for k in range(-6, 10)]
    lost_at = None
    for t, _, what in sorted(e for e in events if e[0] > 0):
        if what == "cycle":
            if cycle(conn, t, ty, dt).expired:
                lost_at = t
        else:
            (ty if what == "ty" else dt).ask(t)
        if job in dt.running:
            break
    assert ty.running[job] == at(0)
    assert lost_at is not None and last + CFG.lease_ttl_s < lost_at <= (
        last + CFG.lease_ttl_s + CFG.cycle_every_s)  # never before ty's lease lapsed
    took = (dt.running[job] - at(last)).total_seconds()
    assert CFG.lease_ttl_s < took <= 30, took
    if (cycle_phase, ask_phase) == (0.0, 1.999):
        assert took == pytest.approx(26.999)  # 20 + 2 + 5 less dt's 1 ms head start


def test_a_request_that_arrived_in_time_renews_however_long_it_waited_for_a_worker(db, conn):
    """A healthy site on a loaded platform: ty's request arrives at 19 s, before its lease (from
    the request at 0 s) lapses at 20 s, but is answered only at 21 s, no cycle having found the
    lease lapsed in between. It renews: the lease is judged as of the arrival, and the renewal
    lasts 20 s from there. A request arriving after the lapse finds the run lost."""
    ty, dt = Agent(conn, db, "ty", "8.00"), Agent(conn, db, "dt", "12.00")
    job = submit_job(conn, spec(), "t1", at(0))
    cycle(conn, 0, ty, dt)
    run = ty.ask(0).new[0].run_id
    late = ty.ask(19, processed=21)
    assert late.renewed == [run] and late.lost == []
    assert conn.execute("SELECT lease_expires_at, last_heard_at FROM runs WHERE id = %s",
                        (run,)).fetchone() == (at(39), at(19))  # 19 + 20
    assert cycle(conn, 38, ty, dt).expired == 0
    lapsed = ty.ask(40)  # nothing arrived between 19 and 40: the lease lapsed at 39
    assert lapsed.lost == [run] and site_of(conn, job)[0] == "queued"


# ---- back-off ----------------------------------------------------------------------------------

def test_a_site_that_keeps_losing_runs_without_a_word_is_held_back_until_it_runs_one(db, conn):
    """ty's agent asks every 5 s and takes the runs it is given, but forgets them (nothing
    started, nothing reported, not renewed). After two such losses in a row ty is held back for
    60 s (backoff_s); then it is tried again, and a run it reports ends the back-off."""
    ty, dt = Agent(conn, db, "ty", "8.00"), Agent(conn, db, "dt", "12.00")
    jobs = [submit_job(conn, spec(), "t1", at(0))]
    broken = True
    held_back = None
    for t in range(0, 200):
        if t % 5 == 0:
            ty.ask(t, keep=not broken)
            dt.ask(t)
        if t % 2 == 0:
            result = cycle(conn, t, ty, dt)
            if result.expired and held_back is None:
                losses = conn.execute("SELECT silent_losses FROM site_lease_health"
                                      " WHERE site_id = %s", (ty.site_id,)).fetchone()[0]
                if losses == 2:
                    held_back = t
                    jobs.append(submit_job(conn, spec(), "t1", at(t)))
                    pinned = submit_job(conn, spec(site="ty"), "t1", at(t))
                    cycle(conn, t, ty, dt)
                    assert site_of(conn, jobs[-1])[1] == dt.site_id  # not the cheaper ty
                    constraint, reason = why_not(conn, pinned, t)["ty"]
                    assert constraint == "lost_runs"
                    assert reason.startswith(f"held back until {at(t + 60):%Y-%m-%d %H:%M:%S}"
                                             " UTC: its last 2 runs were lost")
                elif losses == 1:
                    jobs.append(submit_job(conn, spec(), "t1", at(t)))
        if held_back is not None and t == held_back + 57:
            assert site_of(conn, pinned) == ("queued", None)  # still held back
            broken = False  # ty's executor is fixed
        if held_back is not None and pinned in ty.running:
            break
    # The first loss: placed at 0, taken at 5 (leased until 25), never renewed, found lapsed
    # at 26; the next job placed there at 28, taken at 30, lapsed at 50, found at 52: two in a
    # row, held back until 52 + 60 = 112. Placed there again at 112, taken and run at 115.
    assert held_back == 52
    assert ty.running[pinned] == at(115)
    assert conn.execute("SELECT silent_losses FROM site_lease_health WHERE site_id = %s",
                        (ty.site_id,)).fetchone()[0] == 0


def test_a_report_on_a_lapsed_lease_is_refused_and_the_run_is_lost_at_once(db, conn) -> None:
    """ty's agent comes back after its lease lapsed and reports the run ended: the report is
    refused, and the run is lost and its job queued again there and then (not by the next
    cycle, as when the refusal rolled the expiry back)."""
    ty = Agent(conn, db, "ty", "8.00")
    job = submit_job(conn, spec(), "t1", at(0))
    cycle(conn, 0, ty)
    ty.ask(0)
    (run_id, token), = ty.held.items()
    late = CFG.lease_ttl_s + 5
    ended = RunEvent(agent_id=ty.signed.agent_id, sent_at=at(late), fencing_token=token,
                     state="succeeded", at=at(late), exit_code=0)
    with pytest.raises(Conflict, match="expired"):
        handle_event(conn, ty.signed, run_id, ended, CFG, at(late))
    run_state = conn.execute("SELECT state FROM runs WHERE id = %s", (run_id,)).fetchone()[0]
    assert run_state == "lost"
    assert site_of(conn, job) == ("queued", None)
