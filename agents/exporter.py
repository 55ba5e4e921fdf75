"""The agent's own /metrics, for a site's Prometheus to scrape (as it scrapes dcgm-exporter).

Two kinds of series, on a registry of the agent's own (never the library's global one):

* The latest value of every accelerator, meter and site series the agent read, named
  ``jinsuan_<catalogue name>`` and labelled with the inventory (``uuid``, ``model``,
  ``vendor``, ``rack`` for accelerators; ``meter``, ``role``, ``measures`` for meters). They are
  rebuilt from the newest cycle at each scrape, so a device that disappears stops being
  exported instead of lingering with its last value.
* The agent's health: spool backlog, uploads, rejections, probe durations and errors, and
  ``jinsuan_agent_info{site=...}``, which dashboards join on ``instance`` to pick a site's
  agents (the health series carry no site label of their own).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jinsuan.contract.metrics import CATALOGUE, Kind, Scope
from jinsuan.contract.wire import Inventory

PREFIX = "jinsuan_"
_LABELS: dict[Scope, tuple[str, ...]] = {
    Scope.ACCELERATOR: ("uuid", "model", "vendor", "rack"),
    Scope.METER: ("meter", "role", "measures"),
    Scope.SITE: ("site",),
}


class LatestValues(Collector):
    """The newest value of each (metric, device) series, exported with inventory labels."""

    def __init__(self, site: str) -> None:
        self._site = site
        self._lock = threading.Lock()
        self._values: Mapping[tuple[str, str], float] = {}
        self._inventory = Inventory()

    def update(self, values: Mapping[tuple[str, str], float], inventory: Inventory) -> None:
        with self._lock:
            self._values, self._inventory = dict(values), inventory

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values, inventory = self._values, self._inventory
        accelerators = {a.uuid: a for a in inventory.accelerators}
        meters = {m.id: m for m in inventory.meters}
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for (name, device), value in sorted(values.items()):
            metric = CATALOGUE.get(name)
            if metric is None:
                continue
            family = families.get(name)
            if family is None:
                family = _family(name, metric.kind, metric.help, _LABELS[metric.scope])
                families[name] = family
            if metric.scope is Scope.ACCELERATOR:
                info = accelerators.get(device)
                labels = [device, info.model if info else "", info.vendor if info else "",
                          (info.rack or "") if info else ""]
            elif metric.scope is Scope.METER:
                meter = meters.get(device)
                labels = [device, meter.role.value if meter else "",
                          meter.measures if meter else ""]
            else:
                labels = [self._site]
            family.add_metric(labels, value)
        yield from families.values()


def _family(
    name: str, kind: Kind, documentation: str, labels: tuple[str, ...]
) -> GaugeMetricFamily | CounterMetricFamily:
    if kind is Kind.COUNTER:
        return CounterMetricFamily(PREFIX + name.removesuffix("_total"), documentation,
                                   labels=labels)
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


class AgentMetrics:
    """Everything the agent exports, on its own registry."""

    def __init__(self, site: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        a = PREFIX + "agent_"
        Info(PREFIX + "agent", "The site this agent reports for.", registry=r).info(
            {"site": site})
        self.spool_pending = Gauge(a + "spool_pending_batches",
                                   "Batches in the spool waiting for the platform.", registry=r)
        self.spool_pending_bytes = Gauge(a + "spool_pending_bytes",
                                         "Stored size of the batches waiting.", registry=r)
        self.batches_spooled = Counter(a + "batches_spooled",
                                       "Batches written to the spool.", registry=r)
        self.batches_not_spooled = Counter(
            a + "batches_not_spooled", "Cycles whose batch could not be stored (spool full).",
            ["reason"], registry=r)
        self.batches_sent = Counter(
            a + "batches_sent", "Batches the platform acknowledged, by its answer.",
            ["status"], registry=r)
        self.seq_conflicts = Counter(
            a + "seq_conflicts", "Times the platform held a batch's seq with another body and"
            " the pending batches were renumbered.", registry=r)
        self.batches_rejected = Counter(
            a + "batches_rejected", "Batches the platform refused for good (dropped).",
            ["code"], registry=r)
        self.upload_failures = Counter(
            a + "upload_failures", "Failed sends that will be retried, by cause.",
            ["reason"], registry=r)
        self.last_upload = Gauge(a + "last_successful_upload_timestamp_seconds",
                                 "Unix time of the last acknowledged batch.", registry=r)
        self.cycles = Counter(a + "cycles", "Sampling cycles run.", registry=r)
        self.cycles_missed = Counter(
            a + "cycles_missed", "Sampling ticks skipped because a cycle overran.", registry=r)
        self.probe_duration = Gauge(a + "probe_duration_seconds",
                                    "How long the probe's last read took.", ["probe"], registry=r)
        self.probe_success = Gauge(
            a + "probe_success", "1 if the probe's last read finished without errors.",
            ["probe"], registry=r)
        self.probe_errors = Counter(
            a + "probe_errors", "Device errors, failures and timeouts reported by a probe.",
            ["probe"], registry=r)
        self.probe_timeouts = Counter(
            a + "probe_timeouts", "Reads abandoned at the probe's deadline.", ["probe"],
            registry=r)
        self.points_discarded = Counter(
            a + "points_discarded", "Points not sent: unknown metric, bad id or implausible.",
            ["probe"], registry=r)
        self.latest = LatestValues(site)
        r.register(self.latest)


def serve(metrics: AgentMetrics, host: str, port: int) -> WSGIServer:
    """Serve /metrics on a daemon thread; ``server.shutdown()`` stops it."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
