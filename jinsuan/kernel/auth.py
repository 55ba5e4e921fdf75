"""API keys: stored hashed, each bound to a role and an owner.

A key reads ``jsk_<prefix>_<secret>``. The prefix finds the row; the secret is compared by its
SHA-256. Keys are 256-bit random values, so a fast hash is enough (there is nothing to brute
force, unlike a password) and verification stays cheap on every request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from jinsuan.kernel.errors import Invalid


class Role(enum.StrEnum):
    OPERATOR = "operator"  # runs an enterprise's sites: sees only that enterprise
    DISPATCHER = "dispatcher"  # submits jobs for a tenant
    BUREAU = "bureau"  # the provincial Data Bureau's reviewers: read everything, review, pay
    VIEWER = "viewer"  # the bureau's read-only staff: read what the bureau reads, change nothing
    ADMIN = "admin"  # runs the platform
    METRICS = "metrics"  # a Prometheus scraper: the per-site figures of /metrics/sites only


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    role: Role
    enterprise_id: int | None = None
    tenant: str | None = None


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def create_key(
    conn: psycopg.Connection,
    role: Role,
    *,
    enterprise_id: int | None = None,
    tenant: str | None = None,
    label: str = "",
) -> str:
    """Create a key and return it; only its hash is stored, so this is the one time it is seen."""
    if (role is Role.OPERATOR) != (enterprise_id is not None):
        raise Invalid("an operator key needs an enterprise, and only an operator key has one",
                      field="enterprise")
    if (role is Role.DISPATCHER) != (tenant is not None):
        raise Invalid("a dispatcher key needs a tenant, and only a dispatcher key has one",
                      field="tenant")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api_keys (prefix, secret_sha256, role, enterprise_id, tenant, label)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (prefix, _sha256(secret), role.value, enterprise_id, tenant, label),
    )
    return f"jsk_{prefix}_{secret}"


def authenticate(conn: psycopg.Connection, presented: str) -> Principal | None:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "jsk":
        return None
    row = conn.execute(
        "SELECT id, secret_sha256, role, enterprise_id, tenant FROM api_keys"
        " WHERE prefix = %s AND revoked_at IS NULL",
        (parts[1],),
    ).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), _sha256(parts[2])):
        return None
    return Principal(row[0], Role(row[2]), row[3], row[4])


KEY_CACHE_TTL_S = 5.0
"""How long a platform process trusts a key it verified: the bound on how late a revocation
takes effect there (``jinsuan keys revoke`` runs in another process, which cannot reach it)."""


class KeyCache:
    """Keys verified in the last ``ttl_s`` seconds → their :class:`Principal`.

    Only keys that verified are kept (an unknown or revoked key is asked about each time, so a
    newly created key works at once); entries are found by the key's SHA-256, so no key is kept
    in clear. A revocation takes effect in this process within ``ttl_s``. Thread-safe; at most
    ``max_entries`` keys, the oldest dropped first.
    """

    def __init__(self, ttl_s: float = KEY_CACHE_TTL_S, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, presented: str) -> Principal | None:
        """The cached principal, or None when the key was not verified within ``ttl_s``."""
        digest = _sha256(presented)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if self._clock() >= entry[0]:
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, presented: str, principal: Principal) -> None:
        digest = _sha256(presented)
        with self._lock:
            self._entries.pop(digest, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[digest] = (self._clock() + self.ttl_s, principal)

    def authenticate(self, conn: psycopg.Connection, presented: str) -> Principal | None:
        """:func:`authenticate` through the cache."""
        principal = self.get(presented)
        if principal is None:
            principal = authenticate(conn, presented)
            if principal is not None:
                self.put(presented, principal)
        return principal


def revoke_key(conn: psycopg.Connection, prefix: str) -> bool:
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = %s AND revoked_at IS NULL",
        (prefix,),
    )
    return cur.rowcount == 1
