"""The policy as data: versioned TOML files under ``rewards/policies/``, validated on load.

The code knows which parameters each measure needs and of what kind (an amount of money, a
ratio, a date); every value (rate, cap, threshold, window) comes from the file. A file is
refused whole when it has a key nobody reads, a value of the wrong kind, a cap or amount
without a unit, or dates that overlap another version's; the error names the file and key.
A file's SHA-256 is recorded with every assessment made under it.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from pathlib import Path
from typing import Any

from jinsuan.contract.money import is_fen

POLICIES = Path(__file__).parent / "policies"

AMOUNT, RATIO, DATE = "amount", "ratio", "date"

MEASURE_PARAMETERS: dict[str, dict[str, str]] = {
    "5b": {"rate": AMOUNT, "cap": AMOUNT},
    "4": {"pue_below": RATIO, "full_coverage_hour": RATIO, "min_metered_share": RATIO,
          "new_since": DATE, "per_rack": AMOUNT, "cap": AMOUNT},
    "1": {"min_pflops": RATIO, "min_hours": RATIO, "new_since": DATE,
          "investment_share": RATIO, "cap": AMOUNT, "interest_rate": RATIO,
          "interest_months": RATIO},
    "2": {"min_share": RATIO, "per_rack": AMOUNT, "cap": AMOUNT},
    "3": {"min_terminals": RATIO, "per_rack": AMOUNT, "cap": AMOUNT},
    "6": {"min_share": RATIO, "accelerator_share": "choice:count|capacity|both",
          "new_since": DATE, "reward": AMOUNT, "cap": AMOUNT},
    "9": {"rate": RATIO, "special_rate": RATIO, "cap": AMOUNT, "special_cap": AMOUNT,
          "pool": AMOUNT, "when_pool_short": "choice:issue_remainder|refuse",
          "draw_share": "choice:voucher_rate|full_cost",
          "settlement_period": "choice:quarter|month|year"},
    "10": {"min_contracts": AMOUNT, "rate": RATIO, "cap": AMOUNT, "max_unmetered_share": RATIO},
}
"""What each measure reads from the policy, by kind; ``choice:a|b`` is one of the words."""

_POLICY_KEYS = {"id": str, "version": int, "document": str, "effective_from": date,
                "effective_to": date, "rounding": str}
_VALUE_KEY = {AMOUNT: "amount", RATIO: "value", DATE: "date"}


class PolicyError(ValueError):
    """A policy file that cannot be used, with the file and the key at fault."""

    def __init__(self, path: Path, key: str, reason: str) -> None:
        super().__init__(f"{path.name}: {key}: {reason}")
        self.path, self.key, self.reason = path, key, reason


@dataclass(frozen=True, slots=True)
class Parameter:
    """One figure of the policy; ``assumption`` when the bureau, not the policy, sets it."""

    name: str  # "4.per_rack"
    value: Decimal | date | str
    unit: str
    per: str
    assumption: bool
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": str(self.value), "unit": self.unit,
                "per": self.per, "assumption": self.assumption, "note": self.note}


@dataclass(frozen=True, slots=True)
class Measure:
    key: str
    title: str
    basis: str
    parameters: dict[str, Parameter]

    def amount(self, name: str) -> Decimal:
        value = self.parameters[name].value
        assert isinstance(value, Decimal)
        return value

    ratio = amount

    def date(self, name: str) -> date:
        value = self.parameters[name].value
        assert isinstance(value, date)
        return value

    def choice(self, name: str) -> str:
        value = self.parameters[name].value
        assert isinstance(value, str)
        return value


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    version: int
    document: str
    effective_from: date
    effective_to: date
    rounding: str
    measures: dict[str, Measure]
    sha256: str
    file: str

    def covers(self, day: date) -> bool:
        return self.effective_from <= day <= self.effective_to

    def window(self, year: int) -> tuple[date, date] | None:
        """The inclusive part of calendar ``year`` inside the policy's dates, or None."""
        first, last = max(date(year, 1, 1), self.effective_from), min(date(year, 12, 31),
                                                                       self.effective_to)
        return (first, last) if first <= last else None


def load(path: Path) -> Policy:
    """Read and validate one policy file."""
    return parse(path.read_bytes(), path)


def parse(raw: bytes, path: Path) -> Policy:
    """Validate a policy file's bytes (``path`` names it in errors and in the policy)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(path, "(file)", f"not valid TOML: {exc}") from None
    _only(path, "", data, {"policy", "measures"}, required={"policy", "measures"})
    head = data["policy"]
    _only(path, "policy", head, set(_POLICY_KEYS), required=set(_POLICY_KEYS))
    for key, kind in _POLICY_KEYS.items():
        if not isinstance(head[key], kind) or isinstance(head[key], bool):
            raise PolicyError(path, f"policy.{key}", f"expected a {kind.__name__}")
    if head["effective_from"] > head["effective_to"]:
        raise PolicyError(path, "policy.effective_to", "ends before it starts")
    measures = data["measures"]
    if not isinstance(measures, dict):
        raise PolicyError(path, "measures", "expected a table of measures")
    _only(path, "measures", measures, set(MEASURE_PARAMETERS))
    return Policy(
        id=head["id"], version=head["version"], document=head["document"],
        effective_from=head["effective_from"], effective_to=head["effective_to"],
        rounding=head["rounding"],
        measures={key: _measure(path, key, table) for key, table in measures.items()},
        sha256=hashlib.sha256(raw).hexdigest(), file=path.name)


def load_all(directory: Path = POLICIES) -> list[Policy]:
    """Every policy version in ``directory``, oldest first; versions of one policy must not
    overlap in time nor repeat a version number."""
    policies = sorted((load(p) for p in directory.glob("*.toml")),
                      key=lambda p: (p.id, p.effective_from))
    for before, after in pairwise(policies):
        if before.id != after.id:
            continue
        if after.version == before.version:
            raise PolicyError(Path(after.file), "policy.version",
                              f"version {after.version} is also {before.file}")
        if after.effective_from <= before.effective_to:
            raise PolicyError(Path(after.file), "policy.effective_from",
                              f"{after.effective_from} overlaps {before.file}, in force until"
                              f" {before.effective_to}")
    return policies


def in_force(year: int, directory: Path = POLICIES) -> Policy:
    """The policy version under which ``year`` is assessed: the one in force on the year's
    first day inside any version's dates."""
    for policy in load_all(directory):
        if policy.window(year) is not None:
            return policy
    raise PolicyError(directory, "policy.effective_from",
                      f"no policy version is in force in {year}")


def _measure(path: Path, key: str, table: Any) -> Measure:
    where = f"measures.{key}"
    if not isinstance(table, dict):
        raise PolicyError(path, where, "expected a table")
    wanted = MEASURE_PARAMETERS[key]
    _only(path, where, table, {"title", "basis", *wanted},
          required={"title", "basis", *wanted})
    for text in ("title", "basis"):
        if not isinstance(table[text], str):
            raise PolicyError(path, f"{where}.{text}", "expected a string")
    return Measure(key, table["title"], table["basis"],
                   {name: _parameter(path, f"{key}.{name}", kind, table[name])
                    for name, kind in wanted.items()})


def _parameter(path: Path, name: str, kind: str, table: Any) -> Parameter:
    where = f"measures.{name}"
    if kind.startswith("choice:"):
        return _choice(path, name, kind.removeprefix("choice:").split("|"), table)
    if not isinstance(table, dict):
        raise PolicyError(path, where, f"expected a table with {_VALUE_KEY[kind]!r}")
    value_key = _VALUE_KEY[kind]
    required = {value_key} if kind == DATE else {value_key, "unit"}
    _only(path, where, table, {value_key, "unit", "per", "assumption", "note"},
          required=required)
    if kind == DATE:
        value: Decimal | date = table[value_key]
        if not isinstance(value, date):
            raise PolicyError(path, f"{where}.date", "expected a date (2024-07-01)")
    else:
        text = table[value_key]
        if not isinstance(text, str):
            raise PolicyError(path, f"{where}.{value_key}",
                              'expected a string such as "1000.00", never a float')
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise PolicyError(path, f"{where}.{value_key}", f"{text!r} is not a number"
                              ) from None
        if not value.is_finite() or value < 0:
            raise PolicyError(path, f"{where}.{value_key}", f"{text} is not a figure ≥ 0")
        if kind == AMOUNT and not is_fen(value):
            raise PolicyError(path, f"{where}.amount", f"{text} is not yuan to the fen")
    if name.endswith(".cap") and "per" not in table:
        raise PolicyError(path, f"{where}.per", "a cap says what it is per"
                          " (enterprise, enterprise-year, ...)")
    for text in ("unit", "per", "note"):
        if text in table and not isinstance(table[text], str):
            raise PolicyError(path, f"{where}.{text}", "expected a string")
    assumption = table.get("assumption", False)
    if not isinstance(assumption, bool):
        raise PolicyError(path, f"{where}.assumption", "expected true or false")
    if assumption and not table.get("note"):
        raise PolicyError(path, f"{where}.note", "an assumption says why in a note")
    return Parameter(name, value, table.get("unit", ""), table.get("per", ""), assumption,
                     table.get("note", ""))


def _choice(path: Path, name: str, words: list[str], table: Any) -> Parameter:
    where = f"measures.{name}"
    if not isinstance(table, dict):
        raise PolicyError(path, where, "expected a table with 'value'")
    _only(path, where, table, {"value", "assumption", "note"}, required={"value"})
    if table["value"] not in words:
        raise PolicyError(path, f"{where}.value", f"{table['value']!r} is not one of"
                          f" {', '.join(words)}")
    assumption = table.get("assumption", False)
    if not isinstance(assumption, bool) or (assumption and not table.get("note")):
        raise PolicyError(path, f"{where}.assumption", "true or false; an assumption has a"
                          " note")
    return Parameter(name, table["value"], "", "", assumption, table.get("note", ""))


def _only(path: Path, where: str, table: dict[str, Any], allowed: set[str],
          required: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    prefix = f"{where}." if where else ""
    for key in table:
        if key not in allowed:
            raise PolicyError(path, f"{prefix}{key}",
                              f"unknown key; expected one of {', '.join(sorted(allowed))}")
    for key in sorted(required):
        if key not in table:
            raise PolicyError(path, f"{prefix}{key}", "missing")
