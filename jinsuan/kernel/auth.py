"""API keys: stored hashed, each bound to a role and an owner.

A key reads ``jsk_<prefix>_<secret>``. The prefix finds the row; the secret is compared by its
SHA-256. Keys are 256-bit random values, so a fast hash is enough (there is nothing to brute
force, unlike a password) and verification stays cheap on every request. A key may carry an
expiry; past it, the key is refused as a revoked one is.
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
from datetime import UTC, datetime

import psycopg

from jinsuan.kernel.errors import Invalid


class Role(enum.StrEnum):
    OPERATOR = "operator"  # runs an enterprise's sites: sees only that enterprise
    DISPATCHER = "dispatcher"  # submits jobs for a tenant
    BUREAU = "bureau"  # the provincial Data Bureau's reviewers: read everything, review, pay
    VIEWER = "viewer"  # the bureau's read-only staff: read what the bureau reads, change nothing
    ADMIN = "admin"  # runs the platform
    METRICS = "metrics"  # a Prometheus scraper: the per-site figures of /metrics/sites only
    APPLICANT = "applicant"  # a voucher applicant's staff: its applications and vouchers


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    role: Role
    enterprise_id: int | None = None
    tenant: str | None = None
    applicant_id: int | None = None


_VALID = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
"""A key that may be used: neither revoked nor expired."""


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def create_key(
    conn: psycopg.Connection,
    role: Role,
    *,
    enterprise_id: int | None = None,
    tenant: str | None = None,
    label: str = "",
    expires_at: datetime | None = None,
    applicant_id: int | None = None,
) -> str:
    """Create a key and return it; only its hash is stored, so this is the one time it is seen."""
    if (role is Role.OPERATOR) != (enterprise_id is not None):
        raise Invalid("an operator key needs an enterprise, and only an operator key has one",
                      field="enterprise")
    if (role is Role.DISPATCHER) != (tenant is not None):
        raise Invalid("a dispatcher key needs a tenant, and only a dispatcher key has one",
                      field="tenant")
    if (role is Role.APPLICANT) != (applicant_id is not None):
        raise Invalid("an applicant key needs an applicant, and only an applicant key has one",
                      field="applicant_id")
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= datetime.now(UTC)):
        raise Invalid("an expiry is a moment to come, with its time zone", field="expires_at")
    return _insert(conn, role.value, enterprise_id, tenant, label, expires_at, applicant_id)


def _insert(conn: psycopg.Connection, *row: object) -> str:
    """Store a new key of ``row`` (role, enterprise_id, tenant, label, expires_at,
    applicant_id); return it."""
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api_keys (prefix, secret_sha256, role, enterprise_id, tenant, label,"
        " expires_at, applicant_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (prefix, _sha256(secret), *row),
    )
    return f"jsk_{prefix}_{secret}"


def prefix_of(key: str) -> str:
    """The prefix of ``jsk_<prefix>_<secret>``: what lists, revokes and rotates name a key by."""
    return key.split("_", 2)[1]


def authenticate(conn: psycopg.Connection, presented: str) -> Principal | None:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "jsk":
        return None
    row = conn.execute(
        "SELECT id, secret_sha256, role, enterprise_id, tenant, applicant_id FROM api_keys"
        f" WHERE prefix = %s AND {_VALID}",
        (parts[1],),
    ).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), _sha256(parts[2])):
        return None
    return Principal(row[0], Role(row[2]), row[3], row[4], row[5])


KEY_CACHE_TTL_S = 5.0
"""How long a platform process trusts a key it verified: the bound on how late a revocation or
an expiry takes effect there. The process that revokes a key through the API forgets it at once
(:meth:`KeyCache.forget`); the platform's other processes cannot be reached, and trust it for at
most this long."""


class KeyCache:
    """Keys verified in the last ``ttl_s`` seconds → their :class:`Principal`.

    Only keys that verified are kept (an unknown or revoked key is asked about each time, so a
    newly created key works at once); entries are found by the key's SHA-256, so no key is kept
    in clear. A revocation or expiry takes effect in this process within ``ttl_s``, a revocation
    made here at once (:meth:`forget`). Thread-safe; at most ``max_entries`` keys, the oldest
    dropped first.
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

    def forget(self, key_id: int) -> None:
        """Drop the key ``key_id`` (revoked or rotated away here), so that this process refuses
        it from its next request on."""
        with self._lock:
            for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]

    def authenticate(self, conn: psycopg.Connection, presented: str) -> Principal | None:
        """:func:`authenticate` through the cache."""
        principal = self.get(presented)
        if principal is None:
            principal = authenticate(conn, presented)
            if principal is not None:
                self.put(presented, principal)
        return principal


def revoke_key(conn: psycopg.Connection, prefix: str) -> int | None:
    """Revoke the unrevoked key ``prefix``; its id, or None when there is no such key."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = %s AND revoked_at IS NULL"
        " RETURNING id",
        (prefix,),
    ).fetchone()
    return None if row is None else row[0]


def rotate_key(conn: psycopg.Connection, prefix: str) -> tuple[int, str] | None:
    """Replace the valid key ``prefix`` by a new one of the same role, owner, label and expiry,
    revoking it in the same transaction; the old key's id and the new key, or None when there is
    no unrevoked, unexpired key ``prefix``."""
    with conn.transaction():
        row = conn.execute(
            f"UPDATE api_keys SET revoked_at = now() WHERE prefix = %s AND {_VALID}"
            " RETURNING id, role, enterprise_id, tenant, label, expires_at, applicant_id",
            (prefix,),
        ).fetchone()
        if row is None:
            return None
        return row[0], _insert(conn, *row[1:])
