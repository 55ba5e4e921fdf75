"""The pure placement function: filters and why-not, scores, fair share, ageing, gang jobs.

No database here: snapshots are built by hand and time is a parameter, so long runs are
simulated exactly and quickly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from scheduler.config import SchedulerConfig
from scheduler.placement import (
    ModelInfo,
    Pool,
    QueuedJob,
    Reservation,
    SiteView,
    Snapshot,
    TenantUsage,
    explain,
    held_back_until,
    place,
)
from scheduler.spec import Constraints

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
H100 = ModelInfo("NVIDIA", False, 756.0, 80.0)
ASCEND = ModelInfo("Huawei", True, 320.0, 64.0)


def pool(model="H100", healthy=8, reserved=0, price="10.00", info=H100, releases=()):
    return Pool(model, info, healthy, reserved, Decimal(price) if price is not None else None,
                list(releases))


def site(sid, *pools, name=None, city="Taiyuan", in_province=True, executor="slurm",
         reporting=True, pue=None, **health):
    """A site; Slurm by default, which runs gangs (``EXECUTOR_CAPABILITIES``)."""
    return SiteView(sid, name or f"s{sid}", city, in_province, executor, reporting, pue,
                    {p.model: p for p in pools}, **health)


_seq = iter(range(10**9))


def job(tenant="t1", tasks=1, per_task=1, priority=0, at=T0, runtime=None, avoid=(),
        image=False, **c):
    constraints = Constraints(**c)
    return QueuedJob(f"j{next(_seq):06d}", tenant, priority, at, tasks, per_task, runtime,
                     constraints, constraints.model_dump_json(), frozenset(avoid), image)


def snap(jobs, sites, tenants=None, now=T0, reservations=None):
    return Snapshot(now, list(jobs), list(sites), tenants or {}, reservations or {})


CFG = SchedulerConfig()


# ---- why not placed ----------------------------------------------------------------------------

WHY = [
    ("site_unhealthy", dict(), dict(reporting=False)),
    ("no_executor", dict(), dict(executor=None)),
    ("not_leasing", dict(), dict(leasing=False)),
    ("executor_mismatch", dict(), dict(leasing=False, announced_executor="process")),
    ("lost_runs", dict(), dict(silent_losses=2, last_loss_at=T0 - timedelta(seconds=59))),
    ("pinned", dict(site="elsewhere"), dict()),
    ("out_of_province", dict(), dict(in_province=False)),
    ("model", dict(models=("910B",)), dict()),
    ("vendor", dict(vendor="Huawei"), dict()),
    ("domestic", dict(domestic_only=True), dict()),
    ("fp16", dict(min_fp16_tflops=1000), dict()),
    ("memory", dict(min_memory_gb=96), dict()),
    ("over_price", dict(max_price=Decimal("9.99")), dict()),
    ("fits", dict(), dict()),
]


@pytest.mark.parametrize(("constraint", "job_constraints", "site_state"), WHY)
def test_why_not_names_the_first_constraint_that_failed(constraint, job_constraints,
                                                         site_state):
    j = job(**job_constraints)
    verdicts = explain(j, snap([j], [site(1, pool(), **site_state)]), CFG)
    assert [v.constraint for v in verdicts] == [constraint]
    decisions = place(snap([j], [site(1, pool(), **site_state)]), CFG)
    assert bool(decisions.placements) == (constraint == "fits")


def test_why_not_capacity_kinds():
    small = job(tasks=2, per_task=8)
    assert explain(small, snap([small], [site(1, pool(healthy=8))]), CFG)[0].constraint \
        == "too_small"
    unpriced = job()
    assert explain(unpriced, snap([unpriced], [site(1, pool(price=None))]), CFG)[0].constraint \
        == "no_price"
    busy = job(tasks=1, per_task=4)
    sites = [site(1, pool(healthy=8, reserved=6))]
    assert explain(busy, snap([busy], sites), CFG)[0].constraint == "no_capacity"
    heavy = {"t1": TenantUsage(running={"H100": 6}), "t2": TenantUsage()}
    assert explain(busy, snap([busy], sites, heavy), CFG)[0].constraint == "over_share"
    held = {(1, "H100"): Reservation("gang", 1, "H100", None)}
    one = job()
    verdict = explain(one, snap([one], [site(1, pool())], reservations=held), CFG)[0]
    assert verdict.constraint == "reserved" and "gang" in verdict.reason


def test_why_not_reports_the_pool_that_got_furthest():
    """A site with an unpriced H100 pool and an over-price Ascend pool: the job accepts both
    models, the Ascend pool got further down the rules, so over_price is the answer."""
    j = job(max_price=Decimal("5.00"))
    s = site(1, pool("H100", price=None), pool("910B", info=ASCEND, price="6.00"))
    assert explain(j, snap([j], [s]), CFG)[0].constraint == "over_price"


def test_a_site_not_leasing_or_running_another_executor_says_so():
    j = job()
    quiet = explain(j, snap([j], [site(1, pool(), leasing=False)]), CFG)[0]
    assert quiet.reason == "its agent has not asked for work recently"
    wrong = explain(j, snap([j], [site(1, pool(), leasing=False, announced_executor="process")]),
                    CFG)[0]
    assert "runs the process executor" in wrong.reason and "registered with slurm" in wrong.reason
    # A fresh request announcing the registered executor makes the site placeable, whatever
    # another of its agents announced.
    both = site(1, pool(), leasing=True, announced_executor="process")
    assert explain(j, snap([j], [both]), CFG)[0].constraint == "fits"


def test_a_site_that_loses_runs_without_a_word_is_held_back_doubling_up_to_the_cap():
    cfg = SchedulerConfig(backoff_after_lost=2, backoff_s=60, backoff_max_s=1800)
    last = T0 - timedelta(seconds=10)
    until = {n: held_back_until(site(1, silent_losses=n, last_loss_at=last), cfg)
             for n in (0, 1, 2, 3, 5, 12)}
    # Held back from the 2nd loss in a row: 60 s, then 120, 240, 480, ... up to 1800 s.
    assert until[0] is None and until[1] is None
    assert until[2] == last + timedelta(seconds=60)
    assert until[3] == last + timedelta(seconds=120)
    assert until[5] == last + timedelta(seconds=480)  # 60 × 2³
    assert until[12] == last + timedelta(seconds=1800)  # 60 × 2¹⁰ = 61,440 s, capped
    j = job()
    two = site(1, pool(), silent_losses=2, last_loss_at=last)
    verdict = explain(j, snap([j], [two], now=T0), cfg)[0]
    assert verdict.constraint == "lost_runs" and "its last 2 runs were lost" in verdict.reason
    assert "08:00:50" in verdict.reason  # held back until 07:59:50 + 60 s
    assert place(snap([j], [two], now=T0), cfg).placements == []
    later = T0 + timedelta(seconds=50)  # the back-off is over: the site is tried again
    assert [p.site_id for p in place(snap([j], [two], now=later), cfg).placements] == [1]


def test_an_executor_gets_only_the_jobs_it_can_run():
    """A gang on the process executor would run its command once and be billed for every
    task; an image on Slurm or the process executor would be ignored. Same constraints, so one
    cycle must tell the jobs apart by what they need, not by their constraints alone."""
    cheap = site(1, pool(price="6.00"), executor="process")
    slurm = site(2, pool(price="9.00"), executor="slurm")
    kube = site(3, pool(price="12.00"), executor="kubernetes")
    single, gang, boxed = job(), job(tasks=2, per_task=2), job(image=True)
    placed = _placed_site([single, gang, boxed], [cheap, slurm, kube])
    assert placed == {single.id: 1, gang.id: 2, boxed.id: 3}
    verdicts = {v.site: v for v in explain(gang, snap([gang], [cheap, slurm, kube]), CFG)}
    assert verdicts["s1"].constraint == "gang"
    assert verdicts["s1"].reason == ("the job is a gang of 2 tasks and the process executor runs"
                                     " its command once (gangs run on kubernetes, slurm)")
    assert verdicts["s2"].constraint == verdicts["s3"].constraint == "fits"
    verdicts = {v.site: v for v in explain(boxed, snap([boxed], [cheap, slurm, kube]), CFG)}
    assert (verdicts["s1"].constraint, verdicts["s2"].constraint) == ("image", "image")
    assert "(kubernetes does)" in verdicts["s2"].reason
    assert verdicts["s3"].constraint == "fits"


def test_a_reservation_is_dropped_once_its_job_can_no_longer_use_the_pool():
    """A gang holds a busy pool; the site then charges more than the job's maximum. The hold
    goes in the next decision and a job that fits there is no longer kept out."""
    gang = job("b", per_task=8, at=T0 - timedelta(hours=1), max_price=Decimal("11.00"))
    small = job("a")  # no max runtime: it could never backfill a held pool
    hold = {(1, "H100"): Reservation(gang.id, 1, "H100", None)}
    busy = [(T0 + timedelta(hours=1), 6)]
    kept = place(snap([gang, small], [site(1, pool(reserved=6, releases=busy))],
                      reservations=hold), CFG)
    assert [r.job_id for r in kept.reservations] == [gang.id] and kept.placements == []
    dearer = place(snap([gang, small], [site(1, pool(reserved=6, releases=busy, price="12.00"))],
                        reservations=hold), CFG)
    assert dearer.reservations == []  # 12.00 > 11.00: the gang cannot run there any more
    assert [p.job_id for p in dearer.placements] == [small.id]


# ---- scores ------------------------------------------------------------------------------------

def _placed_site(jobs, sites, cfg=CFG):
    decisions = place(snap(jobs, sites), cfg)
    return {p.job_id: p.site_id for p in decisions.placements}


def test_cheaper_lower_pue_and_preferred_city_win():
    j = job()
    assert _placed_site([j], [site(1, pool(price="12.00")), site(2, pool(price="8.00"))]) \
        == {j.id: 2}
    j = job()
    assert _placed_site([j], [site(1, pool(), pue=1.6), site(2, pool(), pue=1.2)]) == {j.id: 2}
    j = job(cities=("Datong",))
    assert _placed_site([j], [site(1, pool(price="8.00")), site(2, pool(), city="Datong")]) \
        == {j.id: 2}


def test_a_retry_prefers_another_site_but_takes_the_old_one_if_nothing_else_fits():
    j = job(avoid=(2,))
    assert _placed_site([j], [site(1, pool(price="12.00")), site(2, pool(price="8.00"))]) \
        == {j.id: 1}
    j = job(avoid=(2,))
    assert _placed_site([j], [site(1, pool(healthy=0)), site(2, pool())]) == {j.id: 2}


def test_a_gang_goes_to_one_pool_and_never_overfills_it():
    jobs = [job(tasks=2, per_task=4) for _ in range(5)]
    sites = [site(1, pool(healthy=8)), site(2, pool(healthy=12))]
    decisions = place(snap(jobs, sites), CFG)
    assert len(decisions.placements) == 2  # one gang of 8 per site: 12 − 8 leaves only 4
    used = defaultdict(int)
    for p in decisions.placements:
        used[p.site_id] += p.accelerators
    assert used[1] <= 8 and used[2] <= 12


# ---- order: priority with ageing ---------------------------------------------------------------

def test_priority_orders_a_tenant_and_ageing_lets_an_old_low_priority_job_win():
    now = T0 + timedelta(hours=3)
    old_low = job(priority=0, at=T0)  # 0 + 10/h × 3 h = 30
    new_high = job(priority=20, at=now)
    decisions = place(snap([new_high, old_low], [site(1, pool(healthy=1))], now=now), CFG)
    assert [p.job_id for p in decisions.placements] == [old_low.id]
    no_ageing = SchedulerConfig(ageing_per_hour=0)
    decisions = place(snap([new_high, old_low], [site(1, pool(healthy=1))], now=now), no_ageing)
    assert [p.job_id for p in decisions.placements] == [new_high.id]


# ---- gang jobs are not starved by small ones ---------------------------------------------------

def _simulate_gang_vs_stream(cfg: SchedulerConfig, hours: int) -> datetime | None:
    """One 8-accelerator pool; tenant A keeps it full of 1-accelerator, 20-minute jobs started
    at staggered times; tenant B submits an 8-accelerator gang. When does the gang start?"""
    now = T0
    running: list[tuple[datetime, str]] = [(T0 + timedelta(minutes=2 + 2 * i), "a")
                                           for i in range(8)]
    gang = job("b", tasks=2, per_task=4, at=T0, runtime=3600)
    stream = [job("a", at=T0, runtime=1200) for _ in range(10_000)]
    reservations: dict = {}
    while now < T0 + timedelta(hours=hours):
        running = [(end, who) for end, who in running if end > now]
        p = pool(healthy=8, reserved=len(running), releases=[(end, 1) for end, _ in running])
        tenants = {"a": TenantUsage(running={"H100": sum(w == "a" for _, w in running)}),
                   "b": TenantUsage()}
        decisions = place(Snapshot(now, [gang, *stream], [site(1, p)], tenants, reservations),
                          cfg)
        reservations = {(r.site_id, r.model): r for r in decisions.reservations}
        for placement in decisions.placements:
            if placement.job_id == gang.id:
                return now
            stream = [j for j in stream if j.id != placement.job_id]
            running.append((now + timedelta(seconds=1200), "a"))
        now += timedelta(minutes=1)
    return None


def test_a_gang_job_is_not_starved_by_a_stream_of_small_ones():
    started = _simulate_gang_vs_stream(SchedulerConfig(reserve_after_s=300), hours=4)
    # Reserved after 5 minutes; the last stream job then running ends ≤ 20 minutes later.
    assert started is not None and started <= T0 + timedelta(minutes=5 + 20 + 1)


def test_without_reservations_the_same_gang_starves():
    """The control for the test above: the rule, not luck, is what lets the gang start."""
    assert _simulate_gang_vs_stream(SchedulerConfig(max_reservations=0), hours=4) is None


def test_backfill_uses_a_reserved_pool_only_for_jobs_that_end_before_the_gang_starts():
    releases = [(T0 + timedelta(hours=1), 6)]
    hold = {(1, "H100"): Reservation("gang", 1, "H100", T0 + timedelta(hours=1))}
    short, long = job(runtime=1800), job(runtime=7200)
    sites = [site(1, pool(healthy=8, reserved=6, releases=releases))]
    decisions = place(Snapshot(T0, [short, long], sites, {}, {}), CFG)
    assert len(decisions.placements) == 2  # no reservation made by place(): nobody waits
    gang = job("b", tasks=1, per_task=8, at=T0 - timedelta(hours=1))
    sites = [site(1, pool(healthy=8, reserved=6, releases=releases))]
    decisions = place(Snapshot(T0, [gang, short, long], sites, {}, {}), CFG)
    assert decisions.reservations == [Reservation(gang.id, 1, "H100", releases[0][0])]
    assert [p.job_id for p in decisions.placements] == [short.id]
    verdict = explain(long, snap([long], [site(1, pool(healthy=8, reserved=6))],
                                 reservations=hold), CFG)[0]
    assert verdict.constraint == "reserved"


# ---- fair share over a long mixed run ----------------------------------------------------------

def test_weighted_fair_share_holds_over_a_long_mixed_run():
    """Three always-backlogged tenants with weights 1, 1, 2 submit a mix of 1-, 2- and
    4-accelerator jobs of 5 to 60 minutes; tenant t1 submits ten times as many jobs. Over two
    simulated days on 4 sites × 16 accelerators, each tenant's accelerator-time is within
    10 % (relative) of its weighted share: 25 %, 25 %, 50 %."""
    rng = random.Random(20250301)
    weights = {"t1": 1.0, "t2": 1.0, "t3": 2.0}
    sites_spec = [(sid, 16) for sid in range(1, 5)]
    queue: list[QueuedJob] = []
    running: list[tuple[datetime, int, str, int]] = []  # end, site, tenant, accelerators
    used = defaultdict(float)
    now = T0

    def submit(tenant: str, count: int) -> None:
        for _ in range(count):
            minutes = rng.randint(5, 60)
            queue.append(job(tenant, per_task=rng.choice((1, 2, 4)), at=now,
                             runtime=minutes * 60))

    holds: dict = {}
    step = timedelta(minutes=1)
    while now < T0 + timedelta(days=2):
        if sum(j.tenant == "t1" for j in queue) < 200:
            submit("t1", 200)
        for tenant in ("t2", "t3"):
            if sum(j.tenant == tenant for j in queue) < 20:
                submit(tenant, 20)
        running = [r for r in running if r[0] > now]
        sites = []
        for sid, size in sites_spec:
            held = [r for r in running if r[1] == sid]
            sites.append(site(sid, pool(healthy=size, reserved=sum(r[3] for r in held),
                                        releases=[(r[0], r[3]) for r in held])))
        tenants = {t: TenantUsage(weight=w, running={"H100": sum(
            r[3] for r in running if r[2] == t)}) for t, w in weights.items()}
        decisions = place(Snapshot(now, queue, sites, tenants, holds), CFG)
        holds = {(r.site_id, r.model): r for r in decisions.reservations}
        placed = {p.job_id: p for p in decisions.placements}
        for j in queue:
            if j.id in placed:
                running.append((now + timedelta(seconds=j.max_runtime_s or 0),
                                placed[j.id].site_id, j.tenant, j.need))
        queue = [j for j in queue if j.id not in placed]
        for _, _, tenant, n in running:
            used[tenant] += n
        now += step
    total = sum(used.values())
    for tenant, weight in weights.items():
        expected = weight / sum(weights.values())
        assert used[tenant] / total == pytest.approx(expected, rel=0.10), dict(used)
    capacity_minutes = 64 * 2 * 24 * 60
    assert total / capacity_minutes > 0.9  # fair, and still keeps the province busy
