"""The running platform's shared state, built once by the app factory and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database


@dataclass
class Platform:
    settings: Settings
    db: Database
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)  # /metrics, open
    # /metrics/sites, the `metrics` role: figures naming what the API shows only some callers
    # (a tenant's queue); the per-site gauges join them there (collectors.exposition).
    restricted_registry: CollectorRegistry = field(default_factory=CollectorRegistry)
