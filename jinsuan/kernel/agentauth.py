"""Verify a request signed by an enrolled site agent.

The agent signs the exact body bytes with its Ed25519 key (``jinsuan.contract.signing``) and
names itself in the ``X-Jinsuan-Agent`` header. The body must also carry ``agent_id`` (the same
agent) and ``sent_at``; a body sent more than ``window_s`` from the platform's clock is refused,
so a captured request cannot be replayed later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
from pydantic import BaseModel, ValidationError

from jinsuan.contract.signing import BadKey, load_public_key, verify
from jinsuan.kernel.errors import Invalid, Unauthenticated

DEFAULT_WINDOW_S = 300.0

Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SignedBy:
    agent_id: str
    site_id: int


def verify_agent_request(
    conn: psycopg.Connection,
    body: bytes,
    *,
    agent_header: str | None,
    signature: str | None,
    model: type[Body],
    now: datetime | None = None,
    window_s: float = DEFAULT_WINDOW_S,
) -> tuple[SignedBy, Body]:
    """Check the signature, parse ``body`` as ``model`` and check its agent and ``sent_at``.

    Raises ``Unauthenticated`` (401) for a missing, unknown, revoked or wrong signature or a
    ``sent_at`` outside the window, and ``Invalid`` (422) for a body that does not parse.
    """
    if not agent_header:
        raise Unauthenticated("the X-Jinsuan-Agent header is required", field="agent")
    if not signature:
        raise Unauthenticated("the X-Jinsuan-Signature header is required", field="signature")
    row = conn.execute(
        "SELECT public_key, site_id FROM agents WHERE id = %s AND revoked_at IS NULL",
        (agent_header,),
    ).fetchone()
    if row is None:
        raise Unauthenticated(f"unknown or revoked agent {agent_header!r}", field="agent")
    try:
        key = load_public_key(row[0])
    except BadKey:
        raise Unauthenticated("the agent's enrolled key is malformed", field="agent") from None
    if not verify(key, body, signature):
        raise Unauthenticated("signature does not verify with the agent's enrolled key",
                              field="signature")
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Invalid(first["msg"], field=where or "body") from None
    if getattr(parsed, "agent_id", agent_header) != agent_header:
        raise Unauthenticated("agent_id in the body differs from the signing agent",
                              field="agent_id")
    sent_at: datetime | None = getattr(parsed, "sent_at", None)
    if sent_at is None:
        raise Invalid("the body must carry sent_at", field="sent_at")
    now = now or datetime.now(UTC)
    skew = abs((now - sent_at).total_seconds())
    if skew > window_s:
        raise Unauthenticated(
            f"sent_at is {skew:.0f} s from the platform's clock; at most {window_s:.0f} s allowed",
            field="sent_at",
        )
    return SignedBy(agent_header, row[1]), parsed
