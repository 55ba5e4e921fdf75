"""The scheduler's own figures for Prometheus: placement cycles, leases, failovers, the queue.

The counters are this process's (as every Prometheus counter is): a cycle or a lease request
counts where it committed, with one line at that place in ``scheduler.cycle`` and
``scheduler.leases``, which know no platform. ``register`` puts them on the platform's registry
(``/metrics``, open, naming no tenant or site), once per app. The queue by tenant names tenants,
which the API shows a dispatcher only of its own, so it goes on ``platform.restricted_registry``
(``/metrics/sites``, the ``metrics`` role): it is read from the store at each scrape, one
``GROUP BY`` over the queued jobs (the partial index ``jobs_queue`` finds them; the cost grows
with the queue, not with the jobs ever run), so it is the store's truth across every platform
process, not what this one happened to place.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jinsuan.kernel.platform import Platform
from jinsuan.kernel.store import Database

CYCLE_SECONDS = Histogram(
    "jinsuan_scheduler_cycle_duration_seconds",
    "Time one placement cycle took: expire lost leases, snapshot, decide, commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=None)
PLACEMENTS = Counter(
    "jinsuan_scheduler_placements", "Runs placed by a cycle and committed.", registry=None)
REFUSED_AT_COMMIT = Counter(
    "jinsuan_scheduler_placements_refused_at_commit",
    "Placements decided but dropped at commit: the pool filled or the job was taken meanwhile"
    " (by another platform process).", registry=None)
LEASES = Counter(
    "jinsuan_scheduler_leases", "Placed runs handed to a site's agent in a lease reply.",
    registry=None)
LEASE_REQUESTS = Counter(
    "jinsuan_scheduler_lease_requests",
    "Lease requests answered (a long poll woken by a placement is answered again), by result:"
    " ok; executor_mismatch (the agent runs another executor than the site's registered one:"
    " refused, 409); conflict (a run handed out was taken meanwhile: refused, 409, nothing"
    " written). Requests refused by the signature check are not counted here.", ["result"],
    registry=None)
for _result in ("ok", "executor_mismatch", "conflict"):
    LEASE_REQUESTS.labels(_result)  # every result shows from the first scrape, at 0
FAILOVERS = Counter(
    "jinsuan_scheduler_failovers",
    "Runs lost because their lease expired; their jobs go back to the queue while tries"
    " remain.", registry=None)

_QUEUED = "jinsuan_scheduler_queued_jobs"
_QUEUED_HELP = "Jobs waiting in the queue, by tenant (read from the store at the scrape)."


class QueueDepth(Collector):
    """Queued jobs per tenant, read from the store at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterator[Metric]:
        """The family without samples, so registering does not query the store."""
        yield GaugeMetricFamily(_QUEUED, _QUEUED_HELP, labels=["tenant"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(_QUEUED, _QUEUED_HELP, labels=["tenant"])
        with self.db.pool.connection() as conn:
            for tenant, queued in conn.execute(
                    "SELECT tenant, count(*) FROM jobs WHERE state = 'queued'"
                    " GROUP BY tenant ORDER BY tenant"):
                family.add_metric([tenant], float(queued))
        yield family


def register(platform: Platform) -> None:
    """Expose the scheduler's figures on the platform's two registries (once per app)."""
    for metric in (CYCLE_SECONDS, PLACEMENTS, REFUSED_AT_COMMIT, LEASES, LEASE_REQUESTS,
                   FAILOVERS):
        platform.registry.register(metric)
    platform.restricted_registry.register(QueueDepth(platform.db))
