"""Declared facts: what an operator states for its enterprise or data centre and the agents
cannot measure, each with references to its evidence (document names and SHA-256), accepted or
rejected by the bureau with a reason. Assessments read accepted declarations only.

What each kind holds, and which measure reads it:

- ``commissioning`` (4, 1, 6): ``date`` the centre was commissioned or retrofitted,
  ``retrofit`` whether it was a retrofit; per data centre.
- ``investment`` (5a): ``amount`` yuan invested in the scheduling and monitoring platform.
- ``centre_investment`` (1): ``amount`` yuan of the centre's platform software and hardware
  investment; per data centre.
- ``loan`` (1): a project loan of the centre, ``amount`` yuan, annual ``rate``, ``start``
  date, ``months``; per data centre, one declaration a loan.
- ``cloud_revenue_share`` (2), ``domestic_share_other`` (6): a ``share`` between 0 and 1.
- ``out_of_province_contracts`` (10): ``amount`` yuan of contracts in the ``year``, and
  ``excludes_rack_leasing``, which must be true: the declarant states that the amount counts
  no rack leasing (不含机架租赁).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, Literal, TypeVar

import psycopg
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.errors import Conflict, Forbidden, Invalid, NotFound

T = TypeVar("T")
_FEN = Field(ge=0, max_digits=14, decimal_places=2)


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Commissioning(_Value):
    date: date
    retrofit: bool = False


class Investment(_Value):
    amount: Decimal = _FEN


class Loan(_Value):
    amount: Decimal = _FEN
    rate: Decimal = Field(ge=0, le=1)
    start: date
    months: int = Field(ge=1, le=600)


class Share(_Value):
    share: Decimal = Field(ge=0, le=1)


class Contracts(_Value):
    amount: Decimal = _FEN
    year: int = Field(ge=2024, le=2100)
    excludes_rack_leasing: Literal[True]


KINDS: dict[str, tuple[type[_Value], bool]] = {
    "commissioning": (Commissioning, True),  # (what it holds, per data centre)
    "investment": (Investment, False),
    "centre_investment": (Investment, True),
    "loan": (Loan, True),
    "cloud_revenue_share": (Share, False),
    "domestic_share_other": (Share, True),
    "out_of_province_contracts": (Contracts, False),
}


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


EVIDENCE = TypeAdapter(list[Evidence])


def declare(conn: psycopg.Connection, principal: Principal, *, kind: str,
            data_centre: str | None, value: dict[str, Any], evidence: list[dict[str, Any]],
            enterprise_id: int | None = None) -> int:
    """Record a pending declaration of the caller's enterprise (an admin names one)."""
    if kind not in KINDS:
        raise Invalid(f"unknown kind {kind!r}; one of {', '.join(KINDS)}", field="kind")
    model, per_centre = KINDS[kind]
    owner = principal.enterprise_id if principal.role is Role.OPERATOR else enterprise_id
    if owner is None:
        raise Invalid("an admin declares for a named enterprise", field="enterprise_id")
    if per_centre != bool(data_centre):
        raise Invalid(f"a {kind} declaration is " + ("per data centre: name it" if per_centre
                      else "per enterprise: name no data centre"), field="data_centre")
    if data_centre and conn.execute(
            "SELECT 1 FROM sites WHERE enterprise_id = %s AND data_centre = %s",
            (owner, data_centre)).fetchone() is None:
        raise NotFound(f"the enterprise has no data centre {data_centre!r}",
                       field="data_centre")
    checked = validated(lambda: model.model_validate(value), "value")
    papers = validated(lambda: EVIDENCE.validate_python(evidence), "evidence")
    if not papers:
        raise Invalid("a declaration names at least one evidence document", field="evidence")
    return conn.execute(
        "INSERT INTO reward_declarations (enterprise_id, data_centre, kind, value, evidence,"
        " declared_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (owner, data_centre, kind, checked.model_dump_json(),
         json.dumps([p.model_dump() for p in papers]), principal.key_id),
    ).fetchone()[0]  # type: ignore[index]


def validated(check: Callable[[], T], root: str) -> T:
    """``check()``, its first validation error an :class:`Invalid` naming the field."""
    try:
        return check()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Invalid(first["msg"], field=f"{root}.{where}" if where else root) from None


def review(conn: psycopg.Connection, principal: Principal, declaration_id: int, *,
           accept: bool, reason: str) -> None:
    """The bureau accepts or rejects a pending declaration, saying why."""
    if not reason.strip():
        raise Invalid("a review says why", field="reason")
    with conn.transaction():
        row = conn.execute("SELECT status, declared_by FROM reward_declarations WHERE id = %s"
                           " FOR UPDATE", (declaration_id,)).fetchone()
        if row is None:
            raise NotFound(f"no declaration {declaration_id}", field="declaration")
        if row[0] != "pending":
            raise Conflict(f"declaration {declaration_id} is already {row[0]}",
                           field="declaration")
        if row[1] == principal.key_id:
            raise Forbidden("a declaration is reviewed by another key than the one that made"
                            " it", field="declaration")
        conn.execute(
            "UPDATE reward_declarations SET status = %s, reviewed_by = %s, reviewed_at = now(),"
            " reason = %s WHERE id = %s",
            ("accepted" if accept else "rejected", principal.key_id, reason, declaration_id))


def record_other_support(conn: psycopg.Connection, principal: Principal, *, enterprise_id: int,
                         measure: str, fund: str, amount: Decimal, granted_on: date) -> int:
    """Add an entry to the register of support already given by another provincial fund."""
    if not fund.strip():
        raise Invalid("name the fund", field="fund")
    return conn.execute(
        "INSERT INTO reward_other_support (enterprise_id, measure, fund, amount, granted_on,"
        " recorded_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (enterprise_id, measure, fund, amount, granted_on, principal.key_id),
    ).fetchone()[0]  # type: ignore[index]
