"""``/v1/ledger/...``: the money ledger for the bureau and admins: balances, verification
against the signed checkpoints, a checkpoint on demand, and the export an auditor verifies
with ``jinsuan/contract/ledgerproof.py`` (docs/ledger.md)."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, PlatformDep, allow

Auditors = Annotated[Principal, allow(Role.BUREAU, Role.VIEWER, Role.ADMIN)]
Signers = Annotated[Principal, allow(Role.BUREAU, Role.ADMIN)]


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/ledger", tags=["ledger"])

    @api.get("/balances")
    def balances(conn: ConnDep, _: Auditors,
                 prefix: Annotated[str, Query(max_length=200)] = "") -> dict[str, Decimal]:
        """Every account named ``prefix…`` with its balance, derived from the entries."""
        return ledger.balances(conn, prefix)

    @api.get("/verify")
    def verify(conn: ConnDep, platform: PlatformDep, _: Auditors) -> dict[str, Any]:
        """The chain checked entry by entry against the platform's signed checkpoints."""
        key = ledger.signing_key(platform.settings.ledger_key_path()).public_key()
        problems = ledger.verify(conn, key)
        return {"ok": not problems, "problems": [str(p) for p in problems]}

    @api.post("/checkpoint")
    def checkpoint(conn: ConnDep, platform: PlatformDep, _: Signers) -> dict[str, Any]:
        """Sign the chain's head now."""
        return ledger.checkpoint(conn, ledger.signing_key(platform.settings.ledger_key_path()))

    @api.get("/export")
    def export(conn: ConnDep, _: Auditors) -> Response:
        """Every entry and checkpoint as JSON Lines."""
        out = io.StringIO()
        ledger.export(conn, out)
        return Response(out.getvalue(), media_type="application/jsonl",
                        headers={"Content-Disposition": 'attachment; filename="ledger.jsonl"'})

    @api.get("/public-key")
    def public_key(platform: PlatformDep, _: Auditors) -> Response:
        """The platform's ledger public key (PEM); auditors should also get it out of band."""
        return Response(ledger.public_pem(ledger.signing_key(
            platform.settings.ledger_key_path())), media_type="application/x-pem-file")

    return api
