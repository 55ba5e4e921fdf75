"""The demo's voucher story: the model lab ``llm-lab`` acts for an applicant holding a compute
voucher on its contract with Jinneng Compute; its jobs carry the voucher, and as they end each
usage record draws on it live, or draws nothing and says why (a job placed at another
provider's site)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import psycopg

from jinsuan.contract.creditcode import check_character
from jinsuan.kernel.auth import Principal
from jinsuan.kernel.errors import JinsuanError
from rewards.vouchers import issuing, parties

TENANT = "llm-lab"
PROVIDER = "晋能智算 Jinneng Compute"
CONTRACT = "JN-2026-LLM-001"
_APPLICANT_BODY = "91140100MA0JY2601"  # a made-up code: its check character is computed


def ensure_voucher(conn: psycopg.Connection, maker: Principal, checker: Principal,
                   dispatcher: Principal, today: date) -> tuple[int | None, str]:
    """The demo voucher's id (issued on first run), or None and why there is none."""
    row = conn.execute(
        "SELECT v.id FROM vouchers v JOIN voucher_applications a ON a.id = v.application_id"
        " WHERE a.contract_id = %s", (CONTRACT,)).fetchone()
    if row is not None:
        return row[0], f"voucher {row[0]} (reused)"
    code = _APPLICANT_BODY + check_character(_APPLICANT_BODY)
    applicant = conn.execute("SELECT id FROM voucher_applicants WHERE credit_code = %s",
                             (code,)).fetchone()
    try:
        if applicant is None:
            made = parties.register_applicant(conn, code=code, name="晋源大模型实验室",
                                              kind="research_institute", in_province=True)
            parties.bind_tenant(conn, made.id, TENANT)
        application = issuing.apply(conn, dispatcher, issuing.Contract(
            PROVIDER, CONTRACT, Decimal("2000000.00"), date(today.year, 1, 1),
            date(today.year, 12, 31), False, "",
            [{"name": "算力服务合同-演示.pdf", "sha256": "0" * 63 + "1"}]))
        issuing.recommend(conn, maker, application)
        issued = issuing.approve(conn, checker, application, on=today)
    except JinsuanError as exc:
        return None, f"no voucher: {exc.reason}"
    return issued.voucher_id, f"voucher {issued.voucher_id}: {issued.face_value} yuan"
