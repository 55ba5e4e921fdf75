"""Scheduler settings, from ``JINSUAN_SCHED_<NAME>`` environment variables."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Weights(BaseModel):
    """How much each score term counts when choosing among sites that can take a job.

    Each term is in [0, 1]: ``price`` is the cheapest candidate's price over this site's,
    ``pue`` is 1/PUE over the last 24 h, ``load`` is the pool's free fraction before placing,
    ``locality`` is 1 in a preferred city.
    """

    price: float = Field(default=1.0, ge=0)
    pue: float = Field(default=1.0, ge=0)
    load: float = Field(default=0.5, ge=0)
    locality: float = Field(default=2.0, ge=0)


class SchedulerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JINSUAN_SCHED_", env_nested_delimiter="__",
                                      extra="ignore")

    cycle_every_s: float = Field(default=2.0, gt=0)
    lease_ttl_s: float = Field(
        default=20.0, gt=0,
        description="A lease lasts this long after the platform received the request that last"
                    " renewed it. Agents ask at least every lease_ttl_s / 4, so a healthy agent"
                    " has three requests in hand before a lease lapses; a dead site's runs are"
                    " running elsewhere within lease_ttl_s + cycle_every_s + an agent's"
                    " interval (docs/performance.md, failover).")
    site_stale_s: float = Field(
        default=180.0, gt=0,
        description="A site whose agents sent no telemetry for this long gets nothing new.")
    lease_stale_s: float = Field(
        default=15.0, gt=0,
        description="A site whose agents asked for work (a lease request announcing the"
                    " registered executor) less recently than this gets nothing new: three of"
                    " an agent's default 5 s intervals.")
    backoff_after_lost: int = Field(
        default=2, ge=1,
        description="A site whose last runs, this many in a row, were lost without a single"
                    " event from it is held back (its executor takes leases but runs nothing).")
    backoff_s: float = Field(
        default=60.0, ge=0,
        description="How long such a site is held back after its latest such loss; doubled for"
                    " each further loss in a row, up to backoff_max_s.")
    backoff_max_s: float = Field(default=1800.0, ge=0)
    min_cycle_gap_s: float = Field(
        default=0.1, ge=0, description="Triggered cycles start at least this far apart."
    )
    inventory_max_age_s: float = Field(
        default=2.0, ge=0, description="Cycles reuse the sites' healthy inventory this long."
    )
    lease_workers: int = Field(
        default=4, ge=1,
        description="Lease requests answered at once by one platform process; the rest wait"
                    " their turn without holding a thread or a pooled connection, which stay"
                    " free for submits and the cycle.")
    weights: Weights = Field(default_factory=Weights)
    ageing_per_hour: float = Field(
        default=10.0, ge=0, description="Priority points a queued job gains per hour of waiting."
    )
    fair_window_h: float = Field(
        default=24.0, gt=0, description="Recent usage counted in a tenant's share."
    )
    reserve_after_s: float = Field(
        default=300.0, ge=0,
        description="A job blocked this long reserves the pool where it will fit soonest.",
    )
    max_reservations: int = Field(default=16, ge=0)
    runtime_grace_s: float = Field(
        default=300.0, ge=0,
        description="Billed run time may exceed a job's max_runtime_s by this much (the time an"
                    " executor needs to notice the limit and stop the job).")
    clock_skew_s: float = Field(
        default=30.0, ge=0,
        description="A site's reported time may be this far ahead of the platform's clock; a"
                    " time further ahead is refused as a claim in the future.")
    lost_lease_allowance: int = Field(
        default=3, ge=0, description="Tries beyond 1 + retries that lost leases may use."
    )
    retry_elsewhere_penalty: float = Field(default=100.0, ge=0)
