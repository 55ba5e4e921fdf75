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
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
