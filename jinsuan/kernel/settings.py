"""Platform settings, read once at start-up from the environment and passed down.

``DATABASE_URL`` selects an external PostgreSQL; without it the platform starts an embedded
one (pgserver) in ``data_dir``. Every other setting is ``JINSUAN_<NAME>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "jinsuan"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JINSUAN_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "JINSUAN_DATABASE_URL")
    )
    direct_database_url: str | None = Field(
        default=None, description="A URL straight to PostgreSQL, past the pooler DATABASE_URL"
        " may point at, for what needs a session of its own: migrations, the lease wake-ups'"
        " LISTEN, the rollup's session lock, the audit writer. Default: DATABASE_URL.")
    database_pooler: Literal["none", "transaction"] = Field(
        default="none", validate_default=True, description="What DATABASE_URL reaches:"
        " PostgreSQL or a session pooler (none), or a pooler in transaction mode, such as"
        " PgBouncer with pool_mode = transaction (transaction: the pool prepares no statements,"
        " and JINSUAN_DIRECT_DATABASE_URL is required).")
    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=8, ge=2)
    pool_reconnect_s: float = Field(
        default=10, gt=0, description="How long the pool retries a lost connection before"
        " giving up on it; the next request then starts again (a failover's new primary is"
        " found within a second or so).")
    pool_reserved: int = Field(
        default=2, ge=1, description="Pooled connections kept from requests for the placement"
        " cycle and lease wake-ups.")
    request_wait_s: float = Field(
        default=5, gt=0, description="How long a request waits for a connection before a 503.")
    use_timescale: bool = Field(
        default=True, description="Use TimescaleDB hypertables when the extension is available."
    )
    use_citus: bool = Field(
        default=True, description="Distribute the store with Citus when the database is a Citus"
        " coordinator: the citus extension created in it (and on its workers, registered).")
    retention_days: int = Field(default=800, ge=1, description="Raw telemetry kept this long.")
    evidence_recompress_after_days: int = Field(
        default=7, ge=0, description="Kept report bodies whose last sample is older than this"
        " are rewritten as xz (the same signed bytes, about 0.6 of gzip's size), as TimescaleDB"
        " compresses the samples after a week.")
    evidence_xz_preset: int = Field(
        default=6, ge=0, le=9, description="xz preset for recompressed report bodies (6: 2.3"
        " bytes per sample they carry at about 6.5 µs of CPU each; 1: 2.8 at 1 µs).")
    max_future_skew_s: float = Field(default=300, ge=0)
    max_body_bytes: int = Field(default=32 * 2**20, ge=1024)
    max_request_bytes: int = Field(
        default=2**20, ge=1024, description="The largest request body outside /v1/reports.")
    rollup_every_s: float = Field(default=60, gt=0)
    rollup_grace_s: float = Field(
        default=120, ge=0, description="Wait this long after an hour ends before closing it."
    )
    run_background_jobs: bool = True
    ledger_key_file: Path | None = Field(
        default=None, description="The platform's Ed25519 key that signs ledger checkpoints"
        " (created on first use); default: ledger-ed25519.pem in data_dir.")
    ledger_checkpoint_every_s: float = Field(
        default=3600, gt=0, description="How often the ledger's head is signed.")
    federation_upstream_url: str | None = Field(
        default=None, description="A higher-tier platform's URL: forward this platform's closed"
        " site-hours to it, signed (docs/federation.md). Unset: forward nothing.")
    federation_platform: str | None = Field(
        default=None, validate_default=True, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="This platform's name at the higher tier, as its admin registered it"
        " (jinsuan federation add-peer).")
    federation_key_file: Path | None = Field(
        default=None, description="The Ed25519 key that signs forwarded site-hours (created on"
        " first use); default: federation-ed25519.pem in data_dir.")
    federation_every_s: float = Field(
        default=300, gt=0, description="How often pending site-hours are forwarded.")

    rate_per_key: float = Field(
        default=50, gt=0, description="Requests per second one API key may make (per process).")
    rate_per_address: float = Field(
        default=20, gt=0, description="Requests per second from one address without a key.")
    rate_burst: float = Field(default=200, ge=1, description="Requests allowed at once.")
    wrong_secrets_before_lockout: int = Field(
        default=10, ge=1, description="Wrong secrets for one key prefix within a minute before"
        " the prefix is locked out.")
    lockout_s: float = Field(default=300, gt=0, description="How long a lockout lasts.")
    tls_cert_file: Path | None = Field(
        default=None, description="Serve HTTPS with this certificate chain (PEM); with"
        " tls_key_file. Unset: plain HTTP, for a TLS-terminating reverse proxy in front.")
    tls_key_file: Path | None = Field(
        default=None, description="The private key (PEM) of tls_cert_file.")

    @field_validator("database_pooler")
    @classmethod
    def _session_path(cls, pooler: str, info: ValidationInfo) -> str:
        """A path to a PostgreSQL session wherever the pool's URL does not give one. Checked
        here, not in a model validator, so that an error quotes this value only: a model
        validator's error quotes every input, and a URL may hold a password."""
        url, direct = info.data.get("database_url"), info.data.get("direct_database_url")
        if direct and not url:
            raise ValueError("JINSUAN_DIRECT_DATABASE_URL goes with DATABASE_URL (without it the"
                             " platform starts its own embedded PostgreSQL)")
        if pooler == "transaction" and not direct:
            raise ValueError("JINSUAN_DATABASE_POOLER=transaction needs"
                             " JINSUAN_DIRECT_DATABASE_URL: migrations, LISTEN and session"
                             " advisory locks need a session, which a transaction pooler does"
                             " not keep")
        return pooler

    @field_validator("federation_platform")
    @classmethod
    def _federation_pair(cls, platform: str | None, info: ValidationInfo) -> str | None:
        """Checked here, not in a model validator, so that an error quotes this value only."""
        if (info.data.get("federation_upstream_url") is None) != (platform is None):
            raise ValueError("JINSUAN_FEDERATION_UPSTREAM_URL and JINSUAN_FEDERATION_PLATFORM"
                             " go together: set both, or neither")
        return platform

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("JINSUAN_TLS_CERT_FILE and JINSUAN_TLS_KEY_FILE go together:"
                             " set both, or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    def ledger_key_path(self) -> Path:
        return self.ledger_key_file or self.data_dir / "ledger-ed25519.pem"

    def federation_key_path(self) -> Path:
        return self.federation_key_file or self.data_dir / "federation-ed25519.pem"
