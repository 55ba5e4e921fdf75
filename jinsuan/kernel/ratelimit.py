"""Rate limits per API key and per source address, and a lockout after repeated wrong secrets.

Every request spends a token from its key's bucket (by the key's public prefix) or, without a
key, from its source address's bucket; an empty bucket is a ``429`` with ``Retry-After``, before
any work is done. A key prefix presented with a wrong secret ``max_failures`` times within the
failure window is locked out for the lockout period (every request naming it gets a ``429``,
the right secret included, so guessing gains nothing); the lock lifts by itself.

Agents are not limited here: their reports, lease requests and run events are signed, not
keyed, and their rate is the agents' configured interval (the intake bounds the size instead).
Limits are per platform process: behind N replicas a key gets N times the rate.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_KEY_PREFIX = re.compile(rb"^Bearer jsk_([0-9a-f]{12})_")
SIGNED = re.compile(r"^/v1/(reports|leases|runs/[^/]+/events)$")
EXEMPT = frozenset({"/healthz", "/readyz"})


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """Token buckets and wrong-secret counts, shared by every request of one process."""

    per_key: float  # tokens per second
    per_address: float
    burst: float
    max_failures: int = 10
    failure_window_s: float = 60.0
    lockout_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    max_entries: int = 100_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, who: str, rate: float) -> float:
        """0 when ``who`` may go on now (a token spent), else seconds until it may."""
        now = self.clock()
        with self._lock:
            locked = self._locked_until.get(who)
            if locked is not None:
                if now < locked:
                    return locked - now
                del self._locked_until[who]
            bucket = self._buckets.get(who)
            if bucket is None:
                if len(self._buckets) >= self.max_entries:
                    self._buckets.clear()  # forget everyone rather than grow without bound
                bucket = self._buckets[who] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / rate

    def wrong_secret(self, who: str) -> None:
        """Count a wrong secret presented for ``who``; lock it out after too many."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(who, []) if now - t < self.failure_window_s]
            recent.append(now)
            if len(recent) >= self.max_failures:
                self._locked_until[who] = now + self.lockout_s
                self._failures.pop(who, None)
            else:
                self._failures[who] = recent


class RateLimit:
    """ASGI middleware applying a :class:`RateLimiter`."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT or SIGNED.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        prefix = _KEY_PREFIX.match(dict(scope["headers"]).get(b"authorization", b""))
        client = scope.get("client")
        who = f"key:{prefix[1].decode()}" if prefix else f"addr:{client[0] if client else '?'}"
        wait = self.limiter.wait_s(who, self.limiter.per_key if prefix
                                   else self.limiter.per_address)
        if wait > 0:
            await _refuse(send, wait, who)
            return
        status = 0

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watching)
        if status == 401 and prefix:
            self.limiter.wrong_secret(who)


async def _refuse(send: Send, wait_s: float, who: str) -> None:
    whom = "this key" if who.startswith("key:") else "this address"
    body = json.dumps({"error": {"code": "rate_limited", "field": None, "reason":
                       f"too many requests for {whom}; retry after {math.ceil(wait_s)} s"}}
                      ).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(math.ceil(wait_s)).encode())]})
    await send({"type": "http.response.body", "body": body})
