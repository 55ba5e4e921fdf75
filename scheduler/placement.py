"""Placement: a pure function from a snapshot (queue, sites, shares) to decisions.

Nothing here reads the database or the clock; ``scheduler.snapshot`` builds the input and
``scheduler.cycle`` commits the output. The same filters answer "why is this job not placed?"
(:func:`explain`), so the answer is exactly the rule that decided.

**Filters, in order** (the first that fails is the reason given for a site): the site is healthy
(its agent reported telemetry recently) and has an executor; its agent asks for work (a lease
request within ``lease_stale_s`` announcing the registered executor; an agent announcing another
executor is named); it is not held back for losing runs (below); the pinned site; in-province;
its executor can run the job (``leasewire.EXECUTOR_CAPABILITIES``: a gang, tasks > 1, needs an
executor that runs every task; a payload image, one that runs images); then per pool (the
accelerators of one model at the site): model, vendor, domestic, FP16 TFLOPS, memory, a price is
set, price within the job's maximum, the pool is big enough for the whole gang, enough of it is
free now, it is not reserved for a waiting gang job; and the site's agents take another run.

**A site gets no more runs than its agents take.** An agent runs at most ``max_runs`` at once and
says in each lease request how many more it takes (``free_slots``). A run placed beyond them would
sit placed until its lease lapsed and be placed again, so a site's slots (its agents' free slots
less its runs placed and not yet leased, ``scheduler.snapshot``) count down by one per run placed
there, a gang too (one run, one lease); at 0 the site takes nothing more this cycle. Slots are
about runs, not accelerators: reservations ignore them.

**Sites that lose runs are held back.** Telemetry says a site's devices are up; it does not say
its executor runs anything. A site whose last ``backoff_after_lost`` runs in a row were lost
(lease expired) without a single event from it gets nothing new for ``backoff_s`` after the
latest loss, doubled for each further loss in a row up to ``backoff_max_s``; then it is tried
again with the next job that fits. Any event from one of its runs ends the back-off.

**Scores** (weights in ``SchedulerConfig.weights``): price (cheapest candidate / this price),
energy (1 / the site's PUE over the last 24 h; unknown PUE scores as 1.5), load balance (the
pool's free fraction before placing), locality (1 in a preferred city). A retry avoids the sites
where earlier runs of the job failed or were lost, unless no other site fits.

**Order: weighted dominant-resource fair share, then priority with ageing.** Each model pool
across the province is one resource. A tenant's share of a resource is what it runs now plus its
average use over the recent window, over the healthy capacity of that model; its dominant share
is its largest, divided by its weight. The tenant with the lowest dominant share places its next
job first, its share grows, and so on (Ghodsi et al., DRF). Within a tenant, jobs go by
``priority + ageing_per_hour × hours waited`` so a low-priority job's turn comes eventually.

**Gang jobs are not starved by small ones (reservation with backfill).** Capacity frees one
accelerator at a time, and a stream of 1-accelerator jobs would take each as it frees, so a
16-accelerator gang could wait forever. A multi-accelerator job blocked for ``reserve_after_s``
reserves the pool (among those big enough) where it will fit soonest, judged from the live runs'
expected ends (start + max runtime). While reserved, that pool takes no other job, except a
backfill: a job with a max runtime that ends before the reservation's expected start (EASY
backfill, as in Slurm's backfill scheduler). At most one reservation per pool; a reservation lasts
until its job is placed or leaves the queue (each cycle starts from the last cycle's), and at most
``max_reservations`` are held at once so that reservations cannot idle the province.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from jinsuan.contract.leasewire import EXECUTOR_CAPABILITIES, Capability, ExecutorKind
from scheduler.config import SchedulerConfig
from scheduler.spec import Constraints

UNKNOWN_PUE = 1.5


@dataclass(frozen=True, slots=True)
class ModelInfo:
    vendor: str
    domestic: bool
    fp16_tflops: float | None  # the pool's lowest nameplate figure
    memory_gb: float | None  # the pool's smallest device memory


@dataclass(slots=True)
class Pool:
    """The accelerators of one model at one site."""

    model: str
    info: ModelInfo
    healthy: int  # connected and healthy now
    reserved: int  # held by the site's live runs
    price: Decimal | None
    # Live runs' expected ends (None when a run has no max runtime) and their sizes.
    releases: list[tuple[datetime | None, int]] = field(default_factory=list)

    @property
    def free(self) -> int:
        return self.healthy - self.reserved


@dataclass(slots=True)
class SiteView:
    id: int
    name: str
    city: str
    in_province: bool
    executor: str | None
    reporting: bool  # its agent reported telemetry within site_stale_s
    pue: float | None  # Σ facility / Σ IT over the last 24 h
    pools: dict[str, Pool]
    leasing: bool = True  # an agent announcing the registered executor asked within lease_stale_s
    # What the site's latest lease request announced, when that is not the registered executor.
    announced_executor: str | None = None
    silent_losses: int = 0  # its latest runs lost in a row without a single event from it
    last_loss_at: datetime | None = None
    # How many more runs its leasing agents take (their free slots less its runs placed and not
    # yet leased); None when unknown: no cap. place() counts it down as it places there.
    slots: int | None = None
    awaiting_lease: int = 0  # its runs placed, not yet leased

    @property
    def takes_runs(self) -> bool:
        """Whether its agents take another run now (always, when their slots are unknown)."""
        return self.slots is None or self.slots > 0


@dataclass(frozen=True, slots=True)
class QueuedJob:
    id: str
    tenant: str
    priority: int
    submitted_at: datetime
    tasks: int
    accelerators_per_task: int
    max_runtime_s: int | None
    constraints: Constraints
    constraints_key: str
    avoid_sites: frozenset[int] = frozenset()
    image: bool = False  # its payload names a container image

    @property
    def need(self) -> int:
        return self.tasks * self.accelerators_per_task

    @property
    def needs(self) -> frozenset[Capability]:
        """What the site's executor must do for this job (``EXECUTOR_CAPABILITIES``)."""
        wanted = set()
        if self.tasks > 1:
            wanted.add(Capability.GANG)
        if self.image:
            wanted.add(Capability.IMAGE)
        return frozenset(wanted)


@dataclass(frozen=True, slots=True)
class TenantUsage:
    weight: float = 1.0
    running: dict[str, int] = field(default_factory=dict)  # accelerators by model, now
    recent_hours: dict[str, float] = field(default_factory=dict)  # accelerator-hours by model


@dataclass(slots=True)
class Snapshot:
    now: datetime
    jobs: list[QueuedJob]
    sites: list[SiteView]
    tenants: dict[str, TenantUsage]
    # Pools held for waiting gang jobs by the last cycle; place() keeps those still waiting.
    reservations: dict[tuple[int, str], Reservation] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    site_id: int
    model: str
    accelerators: int
    score: float


@dataclass(frozen=True, slots=True)
class Reservation:
    job_id: str
    site_id: int
    model: str
    expected_start: datetime | None  # None: some blocking run has no max runtime


@dataclass(slots=True)
class Decisions:
    placements: list[Placement]
    reservations: list[Reservation]
    considered: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a job can or cannot go to one site: ``constraint`` names the first rule that failed."""

    site_id: int
    site: str
    constraint: str  # "fits" when nothing ruled the site out
    reason: str


# ---- filters -----------------------------------------------------------------------------------

def held_back_until(site: SiteView, cfg: SchedulerConfig) -> datetime | None:
    """Until when a site that lost runs without a word is held back; None when it is not."""
    if site.silent_losses < cfg.backoff_after_lost or site.last_loss_at is None:
        return None
    doublings = min(site.silent_losses - cfg.backoff_after_lost, 32)
    return site.last_loss_at + timedelta(
        seconds=min(cfg.backoff_s * 2 ** doublings, cfg.backoff_max_s))


def _executor_rejection(executor: str, job: QueuedJob) -> tuple[str, str] | None:
    missing = job.needs - EXECUTOR_CAPABILITIES[ExecutorKind(executor)]
    if not missing:
        return None
    need = min(missing)
    able = ", ".join(sorted(k for k, caps in EXECUTOR_CAPABILITIES.items() if need in caps))
    if need is Capability.GANG:
        return "gang", (f"the job is a gang of {job.tasks} tasks and the {executor} executor"
                        f" runs its command once (gangs run on {able})")
    return "image", (f"the job's payload names a container image and the {executor} executor"
                     f" does not run images ({able} does)")


def _site_rejection(site: SiteView, job: QueuedJob, cfg: SchedulerConfig, now: datetime
                    ) -> tuple[str, str] | None:
    c = job.constraints
    if not site.reporting:
        return "site_unhealthy", "its agent has not reported recently"
    if site.executor is None:
        return "no_executor", "no executor is registered for the site"
    if not site.leasing:
        if site.announced_executor is not None:
            return "executor_mismatch", (
                f"its agent runs the {site.announced_executor} executor but the site is"
                f" registered with {site.executor}: its lease requests are refused until the"
                " agent's [executor] kind and the site's registration agree")
        return "not_leasing", "its agent has not asked for work recently"
    until = held_back_until(site, cfg)
    if until is not None and now < until:
        return "lost_runs", (f"held back until {until:%Y-%m-%d %H:%M:%S} UTC: its last"
                             f" {site.silent_losses} runs were lost without a single event from"
                             " the site (leases taken or left to lapse, nothing run)")
    if c.site is not None and c.site != site.name:
        return "pinned", f"the job is pinned to site {c.site!r}"
    if c.in_province_only and not site.in_province:
        return "out_of_province", "the site is outside Shanxi and the job is in-province only"
    return _executor_rejection(site.executor, job)


# Pool rules in filter order; explain() reports the rule reached by the pool that got furthest.
_POOL_RULES = ("model", "vendor", "domestic", "fp16", "memory", "no_price", "over_price")
# Then, for a pool that passes them all, what keeps the job out now (_capacity_verdict).
_CAPACITY_RULES = ("too_small", "no_capacity", "over_share", "reserved", "no_slots")


def _pool_rejection(pool: Pool, c: Constraints) -> tuple[str, str] | None:
    info = pool.info
    if c.models and pool.model not in c.models:
        return "model", f"no accelerator of model {', '.join(c.models)}"
    if c.vendor is not None and info.vendor.lower() != c.vendor.lower():
        return "vendor", f"no accelerator from vendor {c.vendor}"
    if c.domestic_only and not info.domestic:
        return "domestic", "no domestic accelerator"
    if c.min_fp16_tflops is not None and (info.fp16_tflops or 0) < c.min_fp16_tflops:
        return "fp16", f"no accelerator with ≥ {c.min_fp16_tflops:g} FP16 TFLOPS"
    if c.min_memory_gb is not None and (info.memory_gb or 0) < c.min_memory_gb:
        return "memory", f"no accelerator with ≥ {c.min_memory_gb:g} GB memory"
    if pool.price is None:
        return "no_price", f"the site sets no price for {pool.model}"
    if c.max_price is not None and pool.price > c.max_price:
        return "over_price", (f"{pool.model} costs {pool.price} yuan/accelerator-hour,"
                              f" over the job's {c.max_price}")
    return None


@dataclass(slots=True)
class _Candidate:
    site: SiteView
    pool: Pool
    static_score: float  # price, energy and locality terms; load is added per job


def _candidates(sites: Iterable[SiteView], job: QueuedJob, cfg: SchedulerConfig,
                now: datetime) -> list[_Candidate]:
    """The pools that pass every static filter for this job's constraints and needs, with their
    fixed score."""
    c = job.constraints
    passing = [
        (site, pool)
        for site in sites if _site_rejection(site, job, cfg, now) is None
        for pool in site.pools.values() if _pool_rejection(pool, c) is None
    ]
    if not passing:
        return []
    w = cfg.weights
    cheapest = min(pool.price for _, pool in passing if pool.price is not None)
    out = []
    for site, pool in passing:
        assert pool.price is not None
        price_term = 1.0 if pool.price == 0 else float(cheapest / pool.price)
        energy_term = 1.0 / max(site.pue or UNKNOWN_PUE, 1.0)
        local_term = 1.0 if site.city in c.cities else 0.0
        out.append(_Candidate(site, pool, w.price * price_term + w.pue * energy_term
                              + w.locality * local_term))
    out.sort(key=lambda c: (-c.static_score, c.site.id))
    return out


# ---- fair share --------------------------------------------------------------------------------

def capacity_by_model(sites: Iterable[SiteView]) -> dict[str, int]:
    total: dict[str, int] = {}
    for site in sites:
        if not site.reporting:
            continue
        for pool in site.pools.values():
            total[pool.model] = total.get(pool.model, 0) + pool.healthy
    return total


class _Shares:
    """Each tenant's weighted dominant share, updated as the cycle places jobs."""

    def __init__(self, tenants: dict[str, TenantUsage], capacity: dict[str, int],
                 window_h: float) -> None:
        self._tenants = tenants
        self._capacity = capacity
        self._use: dict[str, dict[str, float]] = {}
        for name, usage in tenants.items():
            use = {m: float(n) for m, n in usage.running.items()}
            for model, hours in usage.recent_hours.items():
                use[model] = use.get(model, 0.0) + hours / window_h
            self._use[name] = use

    def weight(self, tenant: str) -> float:
        usage = self._tenants.get(tenant)
        return usage.weight if usage is not None else 1.0

    def dominant(self, tenant: str) -> float:
        use = self._use.get(tenant, {})
        share = max((n / self._capacity[m] for m, n in use.items() if self._capacity.get(m)),
                    default=0.0)
        return share / self.weight(tenant)

    def add(self, tenant: str, model: str, accelerators: int) -> None:
        use = self._use.setdefault(tenant, {})
        use[model] = use.get(model, 0.0) + accelerators

    def entitlement(self, tenant: str, active: Iterable[str]) -> float:
        """The tenant's fair dominant share among ``active`` tenants, before its weight."""
        total = sum(self.weight(t) for t in set(active) | {tenant})
        return 1.0 / total


def effective_priority(job: QueuedJob, now: datetime, ageing_per_hour: float) -> float:
    waited_h = max((now - job.submitted_at).total_seconds(), 0.0) / 3600
    return job.priority + ageing_per_hour * waited_h


# ---- reservation -------------------------------------------------------------------------------

def _expected_start(pool: Pool, need: int, now: datetime) -> datetime | None:
    """When ``need`` accelerators of the pool are expected free, from the live runs' ends."""
    free = pool.free
    if free >= need:
        return now
    for end, size in sorted(pool.releases, key=lambda r: (r[0] is None, r[0] or now)):
        if end is None:
            return None
        free += size
        if free >= need:
            return max(end, now)
    return None


def _backfills(job: QueuedJob, held: Reservation, now: datetime) -> bool:
    if job.max_runtime_s is None or held.expected_start is None:
        return False
    return now + timedelta(seconds=job.max_runtime_s) <= held.expected_start


# ---- the decision ------------------------------------------------------------------------------

_Key = tuple[str, frozenset[Capability]]


def place(snapshot: Snapshot, cfg: SchedulerConfig) -> Decisions:
    """Decide where queued jobs go. Mutates the snapshot's pools (``reserved`` grows) and sites
    (``slots`` shrink, ``awaiting_lease`` grows)."""
    now = snapshot.now
    shares = _Shares(snapshot.tenants, capacity_by_model(snapshot.sites), cfg.fair_window_h)
    queues: dict[str, list[QueuedJob]] = {}
    for job in snapshot.jobs:
        queues.setdefault(job.tenant, []).append(job)
    for queue in queues.values():
        queue.sort(key=lambda j: (-effective_priority(j, now, cfg.ageing_per_hour),
                                  j.submitted_at, j.id))
    heap = [(shares.dominant(t), t) for t in queues]
    heapq.heapify(heap)
    position = dict.fromkeys(queues, 0)

    # Keyed by constraints and needs (what the executor must do), which decide the candidates.
    every_pool: dict[_Key, list[_Candidate]] = {}  # every pool that passes
    candidates: dict[_Key, _PoolQueue] = {}  # the same, best first, as capacity changes
    smallest_failure: dict[_Key, int] = {}  # a need that found no room
    held = _kept_reservations(snapshot, cfg)
    nothing_to_hold: set[tuple[_Key, int]] = set()  # (key, need): every pool taken
    placements: list[Placement] = []
    considered = 0
    reserve_before = now - timedelta(seconds=cfg.reserve_after_s)

    while heap:
        _, tenant = heapq.heappop(heap)
        queue = position[tenant]
        jobs = queues[tenant]
        while queue < len(jobs):
            job = jobs[queue]
            queue += 1
            considered += 1
            key = (job.constraints_key, job.needs)
            if key not in candidates:
                every_pool[key] = _candidates(snapshot.sites, job, cfg, now)
                candidates[key] = _PoolQueue(every_pool[key], cfg.weights.load)
            failed_at = smallest_failure.get(key)
            if failed_at is not None and job.need >= failed_at:
                chosen = None  # capacity and slots only shrink in a cycle: this cannot fit
            else:
                chosen, blocked_by_hold = candidates[key].choose(job, held, now)
                if chosen is None and not blocked_by_hold:
                    smallest_failure[key] = min(job.need, failed_at or job.need)
            if chosen is None:
                if (job.need > 1 and job.submitted_at <= reserve_before
                        and len(held) < cfg.max_reservations
                        and (key, job.need) not in nothing_to_hold
                        and not _reserve(job, every_pool[key], held, now)):
                    nothing_to_hold.add((key, job.need))
                continue
            chosen.pool.reserved += job.need
            chosen.site.awaiting_lease += 1
            if chosen.site.slots is not None:
                chosen.site.slots -= 1
            chosen.pool.releases.append(
                (now + timedelta(seconds=job.max_runtime_s) if job.max_runtime_s else None,
                 job.need))
            shares.add(tenant, chosen.pool.model, job.need)
            placements.append(Placement(job.id, chosen.site.id, chosen.pool.model, job.need,
                                        _score(job, chosen, cfg)))
            if queue < len(jobs):
                heapq.heappush(heap, (shares.dominant(tenant), tenant))
            break
        position[tenant] = queue
    return Decisions(placements, list(held.values()), considered)


def _score(job: QueuedJob, cand: _Candidate, cfg: SchedulerConfig) -> float:
    pool = cand.pool
    score = cand.static_score + cfg.weights.load * _free_fraction(pool)
    if cand.site.id in job.avoid_sites:
        score -= cfg.retry_elsewhere_penalty
    return score


def _free_fraction(pool: Pool) -> float:
    return pool.free / pool.healthy if pool.healthy else 0.0


class _PoolQueue:
    """The pools open to one set of constraints, best score first, kept as a lazy heap.

    A pool's score changes only when its free count does; an entry remembers the free count it
    was scored with and is re-scored when popped stale. Choosing pops entries until one fits the
    job (and is not held for another job, and is not a site the job failed at), then pushes the
    others back: a job costs O(log pools) while the best pools have room. A pool whose site's
    agents take no more runs is dropped for good: slots only shrink within a cycle.
    """

    def __init__(self, cands: list[_Candidate], load_weight: float) -> None:
        self._load = load_weight
        self._heap = [self._entry(i, c) for i, c in enumerate(cands)
                      if c.pool.free > 0 and c.site.takes_runs]
        heapq.heapify(self._heap)

    def _entry(self, order: int, cand: _Candidate) -> tuple[float, int, int, _Candidate]:
        key = cand.static_score + self._load * _free_fraction(cand.pool)
        return (-key, order, cand.pool.free, cand)

    def choose(self, job: QueuedJob, held: dict[tuple[int, str], Reservation],
               now: datetime) -> tuple[_Candidate | None, bool]:
        heap = self._heap
        passed_over = []
        fallback: _Candidate | None = None  # the best pool at a site the job failed at
        chosen: _Candidate | None = None
        blocked_by_hold = False
        while heap:
            entry = heapq.heappop(heap)
            _, order, free_then, cand = entry
            pool = cand.pool
            if not cand.site.takes_runs:
                continue
            if pool.free != free_then:
                if pool.free > 0:
                    heapq.heappush(heap, self._entry(order, cand))
                continue
            passed_over.append(entry)
            if pool.free < job.need:
                continue
            hold = held.get((cand.site.id, pool.model))
            if hold is not None and hold.job_id != job.id and not _backfills(job, hold, now):
                blocked_by_hold = True
                continue
            if cand.site.id in job.avoid_sites:
                fallback = fallback or cand
                continue
            chosen = cand
            break
        for entry in passed_over:
            heapq.heappush(heap, entry)
        return chosen or fallback, blocked_by_hold


def _kept_reservations(snapshot: Snapshot, cfg: SchedulerConfig
                       ) -> dict[tuple[int, str], Reservation]:
    """Last cycle's holds whose job still waits and could still run in the pool held (every
    filter passes there: a price raised over the job's maximum, a site gone quiet or a pool too
    small now frees it), with the expected start brought up to date."""
    waiting = {job.id: job for job in snapshot.jobs}
    sites = {site.id: site for site in snapshot.sites}
    kept = {}
    for key, hold in snapshot.reservations.items():
        job, site = waiting.get(hold.job_id), sites.get(hold.site_id)
        pool = site.pools.get(hold.model) if site is not None else None
        if (job is None or site is None or pool is None or pool.healthy < job.need
                or _site_rejection(site, job, cfg, snapshot.now) is not None
                or _pool_rejection(pool, job.constraints) is not None):
            continue
        start = _expected_start(pool, job.need, snapshot.now)
        kept[key] = Reservation(hold.job_id, hold.site_id, hold.model, start)
    return kept


def _reserve(job: QueuedJob, cands: list[_Candidate], held: dict[tuple[int, str], Reservation],
             now: datetime) -> bool:
    """Hold the pool where the blocked job is expected to fit soonest, if one is free to hold."""
    best: tuple[datetime, int, str] | None = None
    for cand in cands:
        key = (cand.site.id, cand.pool.model)
        if key in held or cand.pool.healthy < job.need:
            continue
        start = _expected_start(cand.pool, job.need, now)
        if start is None:
            start = datetime.max.replace(tzinfo=now.tzinfo)
        if best is None or (start, cand.site.id) < best[:2]:
            best = (start, cand.site.id, cand.pool.model)
    if best is None:
        return False
    start, site_id, model = best
    known = None if start.year == datetime.max.year else start
    held[(site_id, model)] = Reservation(job.id, site_id, model, known)
    return True


# ---- why not placed ----------------------------------------------------------------------------

def explain(job: QueuedJob, snapshot: Snapshot, cfg: SchedulerConfig) -> list[Verdict]:
    """For each site, the first rule that rules this job out there, or "fits"."""
    shares = _Shares(snapshot.tenants, capacity_by_model(snapshot.sites), cfg.fair_window_h)
    waiting = {j.tenant for j in snapshot.jobs} | set(snapshot.tenants)  # tenants with a say
    over_share = shares.dominant(job.tenant) > shares.entitlement(job.tenant, waiting)
    verdicts = []
    for site in snapshot.sites:
        rejected = _site_rejection(site, job, cfg, snapshot.now)
        if rejected is None:
            rejected = _pool_verdict(job, site, snapshot, over_share)
        constraint, reason = rejected or ("fits", "eligible now; expect placement next cycle")
        verdicts.append(Verdict(site.id, site.name, constraint, reason))
    return verdicts


def _pool_verdict(job: QueuedJob, site: SiteView, snapshot: Snapshot, over_share: bool
                  ) -> tuple[str, str] | None:
    c = job.constraints
    if not site.pools:
        return "model", "no healthy accelerators reported"
    furthest: tuple[int, tuple[str, str]] | None = None
    depth = len(_POOL_RULES)
    for pool in site.pools.values():
        rejected = _pool_rejection(pool, c)
        if rejected is None:
            rejected = _capacity_verdict(job, site, pool, snapshot, over_share)
            if rejected is None:
                return None
            rank = depth + _CAPACITY_RULES.index(rejected[0])
        else:
            rank = _POOL_RULES.index(rejected[0])
        if furthest is None or rank > furthest[0]:
            furthest = (rank, rejected)
    assert furthest is not None
    return furthest[1]


def _capacity_verdict(job: QueuedJob, site: SiteView, pool: Pool, snapshot: Snapshot,
                      over_share: bool) -> tuple[str, str] | None:
    need = job.need
    if pool.healthy < need:
        return "too_small", (f"the gang needs {need} × {pool.model} at one site;"
                             f" the site has {pool.healthy} healthy")
    if pool.free < need:
        if over_share:
            return "over_share", (f"{pool.free} of {pool.healthy} {pool.model} free, {need}"
                                  f" needed; tenant {job.tenant} is over its fair share, so"
                                  " other tenants' jobs go first")
        return "no_capacity", f"{pool.free} of {pool.healthy} {pool.model} free, {need} needed"
    hold = snapshot.reservations.get((site.id, pool.model))
    if hold is not None and hold.job_id != job.id and not _backfills(job, hold, snapshot.now):
        return "reserved", f"{pool.model} here is held for waiting gang job {hold.job_id}"
    if not site.takes_runs:
        return "no_slots", (f"its agents take no more runs now"
                            f" ({(site.slots or 0) + site.awaiting_lease} free slots,"
                            f" {site.awaiting_lease} runs placed awaiting lease)")
    return None
