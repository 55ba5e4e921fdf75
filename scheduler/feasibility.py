"""Can any registered site ever run this job? Told at submit, and while the job waits.

Placement (``scheduler.placement``) explains a waiting job against the sites as they are *now*:
healthy devices, free capacity, fair share, agents with free slots (``no_capacity``,
``over_share``, ``reserved``, ``no_slots``: temporary, so never named here). A job no site can
run as the sites are registered (a model nobody has, a gang bigger than any site's pool of one
model, domestic accelerators or FP16 TFLOPS nobody offers) gets the same answers as one waiting
for capacity, and waits forever.
This module reads what is registered instead: every site, every accelerator it has ever reported
(healthy or not) and the prices set, and names the obstacles no registered site can lift.

- **Permanent** obstacles are about what the sites have: the pinned site, the province, the
  model, vendor, domestic, FP16, memory, and a pool of one model big enough for the whole gang
  (the same rules and names as placement's filters). Only a new site or new hardware lifts them.
- **For now** obstacles are about what the sites have set: an executor, a price, a price within
  the job's maximum. An operator lifts them with ``PUT /v1/sites/{id}/scheduling``.

Each rule is first checked alone against every registered pool (each that fails is named); when
each passes alone but no pool passes them all, the rule that empties the candidates, taken in
placement's order, is named with the constraints that narrowed them. A pool's figures are taken
at their most generous (its fastest, largest device, domestic if any device is), so an obstacle
named permanent is one no registered device could lift.

A job pinned to a site that is not registered is refused at submit (422 ``constraints.site``)
rather than warned about: nothing placement does can change that, and it is most likely a
misspelt name. The dispatcher submits again once such a site is registered.

Submits read the registry through a :class:`RegistryCache` (``scheduler.submits``): reading it
costs a scan of every accelerator (some 10 ms for 12,800), too much for each submit, and it
changes at the pace of new sites, hardware and prices. So a submit's warnings may be up to
``REGISTRY_MAX_AGE_S`` old, while a refusal never is: a job pinned to a site the cache does not
hold reads the registry again first. ``GET /v1/jobs/{id}`` reads it afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from pydantic import BaseModel

from jinsuan.kernel.errors import Invalid
from scheduler.spec import Constraints, JobSpec

REGISTRY_MAX_AGE_S = 5.0


class Obstacle(BaseModel):
    """A constraint no registered site meets, in placement's words (``why_not``'s names)."""

    constraint: str
    reason: str


@dataclass(frozen=True, slots=True)
class RegisteredPool:
    """The accelerators of one model a site has registered, at their most generous."""

    model: str
    vendor: str
    domestic: bool
    fp16_tflops: float | None
    memory_gb: float | None
    count: int
    price: Decimal | None


@dataclass(frozen=True, slots=True)
class RegisteredSite:
    name: str
    in_province: bool
    executor: str | None
    pools: list[RegisteredPool] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Feasibility:
    permanent: list[Obstacle]
    for_now: list[Obstacle]

    @property
    def warnings(self) -> list[Obstacle]:
        return self.permanent + self.for_now


_POOLS = """
SELECT a.site_id, a.model, min(a.vendor), bool_or(a.domestic), max(a.fp16_tflops),
       max(a.memory_total_bytes), count(*), p.yuan_per_accelerator_hour
FROM accelerators a
LEFT JOIN site_prices p ON p.site_id = a.site_id AND p.model = a.model
GROUP BY a.site_id, a.model, p.yuan_per_accelerator_hour
"""


def load_registry(conn: psycopg.Connection) -> dict[str, RegisteredSite]:
    """Every registered site by name, with its pools of registered accelerators."""
    by_id = {site_id: RegisteredSite(name, in_province, executor)
             for site_id, name, in_province, executor in conn.execute(
                 "SELECT id, name, in_province, executor FROM sites")}
    for site_id, model, vendor, domestic, tflops, memory, count, price in conn.execute(_POOLS):
        site = by_id.get(site_id)
        if site is not None:
            site.pools.append(RegisteredPool(model, vendor, domestic, tflops,
                                             memory / 1e9 if memory else None, count, price))
    return {site.name: site for site in by_id.values()}


class RegistryCache:
    """The registry, read again once ``max_age_s`` old or when asked for a site it lacks. Used
    by one thread (the submit writer's)."""

    def __init__(self, max_age_s: float = REGISTRY_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._registry: dict[str, RegisteredSite] | None = None
        self._read_at = 0.0

    def get(self, conn: psycopg.Connection, sites: Collection[str] = ()
            ) -> dict[str, RegisteredSite]:
        """The registry, holding each of ``sites`` if it is registered."""
        registry = self._registry
        if (registry is None or time.monotonic() - self._read_at > self.max_age_s
                or any(name not in registry for name in sites)):
            self._read_at = time.monotonic()
            registry = self._registry = load_registry(conn)
        return registry


_Pair = tuple[RegisteredSite, RegisteredPool]


@dataclass(frozen=True, slots=True)
class _Rule:
    constraint: str
    asked: Callable[[Constraints, int], bool]
    passes: Callable[[RegisteredSite, RegisteredPool, Constraints, int], bool]
    lacking: Callable[[Constraints, int], str]  # what no registered site has
    narrows: Callable[[Constraints, int], str]  # the constraint, as a later reason cites it
    best: Callable[[RegisteredPool], float | None] | None = None  # the figure it compares
    best_is: str = ""


_PERMANENT = (
    _Rule("out_of_province", lambda c, n: c.in_province_only,
          lambda s, p, c, n: s.in_province,
          lambda c, n: "accelerators in Shanxi (the job is in-province only)",
          lambda c, n: "in_province_only"),
    _Rule("model", lambda c, n: bool(c.models),
          lambda s, p, c, n: p.model in c.models,
          lambda c, n: f"an accelerator of model {', '.join(c.models)}",
          lambda c, n: f"models {', '.join(c.models)}"),
    _Rule("vendor", lambda c, n: c.vendor is not None,
          lambda s, p, c, n: p.vendor.lower() == (c.vendor or "").lower(),
          lambda c, n: f"an accelerator from vendor {c.vendor}",
          lambda c, n: f"vendor {c.vendor}"),
    _Rule("domestic", lambda c, n: c.domestic_only,
          lambda s, p, c, n: p.domestic,
          lambda c, n: "a domestic accelerator",
          lambda c, n: "domestic_only"),
    _Rule("fp16", lambda c, n: c.min_fp16_tflops is not None,
          lambda s, p, c, n: (p.fp16_tflops or 0) >= (c.min_fp16_tflops or 0),
          lambda c, n: f"an accelerator with ≥ {c.min_fp16_tflops:g} FP16 TFLOPS",
          lambda c, n: f"min_fp16_tflops {c.min_fp16_tflops:g}",
          lambda p: p.fp16_tflops, "the fastest has"),
    _Rule("memory", lambda c, n: c.min_memory_gb is not None,
          lambda s, p, c, n: (p.memory_gb or 0) >= (c.min_memory_gb or 0),
          lambda c, n: f"an accelerator with ≥ {c.min_memory_gb:g} GB memory",
          lambda c, n: f"min_memory_gb {c.min_memory_gb:g}",
          lambda p: p.memory_gb, "the largest has"),
    _Rule("too_small", lambda c, n: True,
          lambda s, p, c, n: p.count >= n,
          lambda c, n: f"{n} accelerators of one model (a gang starts at one site)",
          lambda c, n: f"gang of {n} accelerators",
          lambda p: p.count, "the largest pool has"),
)

_FOR_NOW = (
    _Rule("no_executor", lambda c, n: True,
          lambda s, p, c, n: s.executor is not None,
          lambda c, n: "an executor registered", lambda c, n: "an executor"),
    _Rule("no_price", lambda c, n: True,
          lambda s, p, c, n: p.price is not None,
          lambda c, n: "a price set", lambda c, n: "a price"),
    _Rule("over_price", lambda c, n: c.max_price is not None,
          lambda s, p, c, n: p.price is not None and p.price <= (c.max_price or 0),
          lambda c, n: f"a price of at most {c.max_price} yuan per accelerator-hour",
          lambda c, n: f"max_price {c.max_price}"),
)


def _obstacle(rule: _Rule, c: Constraints, need: int, among: Sequence[_Pair],
              narrowed: Sequence[str] = ()) -> Obstacle:
    """``rule`` as the reason no site among ``among`` (those that met ``narrowed``) fits."""
    which = f" meeting the job's {', '.join(narrowed)}" if narrowed else ""
    reason = f"no registered site{which} has {rule.lacking(c, need)}"
    if rule.best is not None:
        best = max((rule.best(p) or 0 for _, p in among), default=0)
        reason += f"; {rule.best_is} {best:g}"
    return Obstacle(constraint=rule.constraint, reason=reason)


def assess(constraints: Constraints, need: int, registry: dict[str, RegisteredSite]
           ) -> Feasibility:
    """The obstacles no registered site can lift for a job of ``need`` accelerators."""
    c = constraints
    everyone = [(s, p) for s in registry.values() for p in s.pools]
    narrowed: list[str] = []
    candidates = everyone
    if c.site is not None:
        pinned = registry.get(c.site)
        if pinned is None:
            return Feasibility([Obstacle(constraint="pinned",
                                         reason=f"no site named {c.site!r} is registered")], [])
        if not pinned.pools:
            return Feasibility([Obstacle(constraint="pinned",
                                         reason=f"site {c.site!r} has no registered"
                                                " accelerators")], [])
        candidates = [(s, p) for s, p in everyone if s is pinned]
        if len(candidates) < len(everyone):
            narrowed.append(f"site {c.site}")
    if not everyone:
        return Feasibility([Obstacle(constraint="model",
                                     reason="no registered site has any accelerators")], [])
    alone = [_obstacle(r, c, need, everyone) for r in _PERMANENT
             if r.asked(c, need) and not any(r.passes(s, p, c, need) for s, p in everyone)]
    if alone:
        return Feasibility(alone, [])
    permanent, candidates = _narrow(_PERMANENT, c, need, candidates, narrowed)
    if permanent:
        return Feasibility(permanent, [])
    for_now, _ = _narrow(_FOR_NOW, c, need, candidates, narrowed)
    return Feasibility([], for_now)


def _narrow(rules: Sequence[_Rule], c: Constraints, need: int, candidates: list[_Pair],
            narrowed: list[str]) -> tuple[list[Obstacle], list[_Pair]]:
    """Apply the rules in order; the first that leaves no candidate is the obstacle."""
    for rule in rules:
        if not rule.asked(c, need):
            continue
        kept = [(s, p) for s, p in candidates if rule.passes(s, p, c, need)]
        if not kept:
            return [_obstacle(rule, c, need, candidates, narrowed)], []
        if len(kept) < len(candidates):
            narrowed.append(rule.narrows(c, need))
        candidates = kept
    return [], candidates


def check_submit(spec: JobSpec, registry: dict[str, RegisteredSite]) -> Feasibility:
    """A submitted job's warnings; a job pinned to a site that is not registered is refused."""
    site = spec.constraints.site
    if site is not None and site not in registry:
        raise Invalid(f"no site named {site!r} is registered", field="constraints.site")
    return assess(spec.constraints, spec.accelerators, registry)


def permanent_obstacles(conn: psycopg.Connection, constraints: Constraints, need: int
                        ) -> list[Obstacle]:
    """What keeps a waiting job from every registered site, whatever their capacity."""
    return assess(constraints, need, load_registry(conn)).permanent
