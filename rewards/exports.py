"""The awards of a year as files for the bureau's own tools: CSV and XLSX, with the assessments
they come from, the figures behind each amount and the policy parameters they rest on.

The rows are those of the ``/v1/rewards/awards`` route (so who sees which award is decided
there, once); :func:`year_awards` completes them with each award's figures and with the frozen
policy text of the assessments, and the writers are pure functions of the result.

- CSV is UTF-8 with a byte-order mark: without it Excel reads the file in the machine's code
  page and shows Chinese names as mojibake.
- Amounts stay ``Decimal`` to the end. openpyxl writes a ``Decimal`` cell through a float
  (``"%.16g" % value``), so an XLSX amount is stored as a number cell whose text is the
  ``Decimal``'s own, formatted to two decimals.
- A text cell that starts like a formula (``=``, ``+``, ``-``, ``@``) is kept text: in the CSV
  with a leading apostrophe (Excel would run it), in the XLSX as a string cell (openpyxl would
  store it as a formula).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel.errors import NotFound
from rewards.inputs import ASSUMPTION
from rewards.policy import Parameter, Policy, parse
from rewards.store import CALCULATIONS, latest_id

if TYPE_CHECKING:
    from openpyxl.cell import Cell
    from openpyxl.worksheet.worksheet import Worksheet

CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PDF_TYPE = "application/pdf"
AMOUNT_FORMAT = "#,##0.00"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

AWARD_COLUMNS = ("award id", "assessment id", "measure", "year", "enterprise", "data centre",
                 "amount (yuan)", "eligible", "state", "payment reference", "reasons",
                 "assumptions", "rests on assumptions")
ASSESSMENT_COLUMNS = ("assessment id", "year", "measure", "policy id", "policy version",
                      "policy sha256", "code version", "inputs sha256",
                      "created (Beijing time)")
PARAMETER_COLUMNS = ("policy id", "policy version", "measure", "parameter", "value", "unit",
                     "per", "assumption", "note")
FIGURE_COLUMNS = ("award id", "measure", "enterprise", "data centre", "figure", "value",
                  "source", "how")


@dataclass(frozen=True, slots=True)
class ExportedAward:
    """One row of the awards route with the figures its amount was worked out from."""

    id: int
    assessment: int
    measure: str
    year: int
    enterprise: str
    data_centre: str | None
    amount: Decimal
    eligible: bool
    state: str
    payment_reference: str | None
    reasons: tuple[str, ...]
    assumptions: tuple[str, ...]  # the assumed parameters it rests on ("5b.rate")
    figures: tuple[dict[str, str], ...]  # rewards.inputs.Figure as stored: name, value, ...

    @property
    def rests_on_assumptions(self) -> bool:
        """Whether the amount depends on a figure the bureau chose rather than the policy."""
        return bool(self.assumptions) or any(f["source"] == ASSUMPTION for f in self.figures)


@dataclass(frozen=True, slots=True)
class AssessmentHead:
    """An assessment as it was recorded; ``policy`` parsed from its frozen policy text."""

    id: int
    year: int
    measure: str
    policy_id: str
    policy_version: int
    policy_sha256: str
    code_version: str
    inputs_sha256: str
    created_at: datetime
    policy: Policy

    @property
    def title(self) -> str:
        return self.policy.measures[self.measure].title

    @property
    def parameters(self) -> list[Parameter]:
        return list(self.policy.measures[self.measure].parameters.values())


@dataclass(frozen=True, slots=True)
class YearAwards:
    """What an export holds: the year's latest assessment of each measure and the awards the
    caller may see; ``enterprise`` names the one enterprise they are restricted to, if any."""

    year: int
    awards: tuple[ExportedAward, ...]
    assessments: tuple[AssessmentHead, ...]
    enterprise: str | None

    def of(self, measure: str) -> list[ExportedAward]:
        return [a for a in self.awards if a.measure == measure]


def year_awards(conn: psycopg.Connection, year: int, rows: Sequence[dict[str, Any]], *,
                enterprise_id: int | None) -> YearAwards:
    """``rows`` of the awards route for ``year`` (already restricted to ``enterprise_id`` when
    it is set) with their figures and the year's latest assessments."""
    ids = [found for found in (latest_id(conn, year, m) for m in CALCULATIONS)
           if found is not None]
    if not ids:
        raise NotFound(f"no measure has been assessed for {year}", field="year")
    heads = tuple(
        AssessmentHead(*row[:9], parse(row[9].encode(), Path(row[3])))  # type: ignore[arg-type]
        for row in conn.execute(
            "SELECT id, year, measure, policy_id, policy_version, policy_sha256, code_version,"
            " inputs_sha256, created_at, policy_text FROM reward_assessments"
            " WHERE id = ANY(%s) ORDER BY measure", (ids,)))
    figures = dict(conn.execute(
        "SELECT id, detail->'figures' FROM reward_awards WHERE id = ANY(%s)",
        ([r["id"] for r in rows],)).fetchall())
    awards = tuple(ExportedAward(
        id=r["id"], assessment=r["assessment"], measure=r["measure"], year=r["year"],
        enterprise=r["enterprise"], data_centre=r["data_centre"], amount=r["amount"],
        eligible=r["eligible"], state=r["state"], payment_reference=r["payment_reference"],
        reasons=tuple(r["reasons"]), assumptions=tuple(r["assumptions"]),
        figures=tuple(figures[r["id"]])) for r in rows)
    name = None
    if enterprise_id is not None:
        name = conn.execute("SELECT name FROM enterprises WHERE id = %s",
                            (enterprise_id,)).fetchone()[0]  # type: ignore[index]
    return YearAwards(year, awards, heads, name)


def parameters(export: YearAwards) -> Iterator[tuple[AssessmentHead, Parameter]]:
    """Each parameter of the assessed measures once, with the assessment whose frozen policy
    it was read from (two assessments of a year may rest on different policy versions)."""
    seen: set[tuple[str, str]] = set()
    for head in export.assessments:
        for parameter in head.parameters:
            if (head.policy_sha256, parameter.name) not in seen:
                seen.add((head.policy_sha256, parameter.name))
                yield head, parameter


def yes(value: bool) -> str:
    return "yes" if value else "no"


def fen_text(amount: Decimal) -> str:
    """An amount of yuan as text to the fen, exactly (``Decimal`` formatting, no float)."""
    return f"{amount:.2f}"


def _award_cells(award: ExportedAward) -> list[Any]:
    """One award's cells in :data:`AWARD_COLUMNS` order; the amount as its ``Decimal``."""
    return [award.id, award.assessment, award.measure, award.year, award.enterprise,
            award.data_centre or "", award.amount, yes(award.eligible), award.state,
            award.payment_reference or "", "; ".join(award.reasons),
            ", ".join(award.assumptions), yes(award.rests_on_assumptions)]


def csv_text(value: Any) -> str:
    """A CSV cell: an amount to the fen, nothing for ``None``, a formula-like text kept text."""
    if isinstance(value, Decimal):
        return fen_text(value)
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_bytes(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """A header and rows of :func:`csv_text` cells; UTF-8 with a BOM, CRLF line ends."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_text(v) for v in row])
    return out.getvalue().encode("utf-8-sig")


def awards_csv(export: YearAwards) -> bytes:
    """One row per award, in :data:`AWARD_COLUMNS`; UTF-8 with a BOM, CRLF line ends."""
    return csv_bytes(AWARD_COLUMNS, (_award_cells(award) for award in export.awards))


def awards_xlsx(export: YearAwards) -> bytes:
    """Sheets "Awards" (as the CSV, amounts as numbers), "Assessments", "Parameters" (of the
    assessed measures, each with its assumption mark and note) and "Figures" (how each amount
    was worked out, each figure marked measured, declared, assumption or policy)."""
    from openpyxl import Workbook  # here: the platform starts without loading it

    book = Workbook()
    awards = book.active
    assert awards is not None
    awards.title = "Awards"
    header(awards, AWARD_COLUMNS, (10, 12, 9, 7, 24, 24, 15, 9, 10, 20, 60, 30, 12))
    amount_column = AWARD_COLUMNS.index("amount (yuan)")
    for award in export.awards:
        cells = _award_cells(award)
        cells[amount_column] = None
        append(awards, cells)
        exact_amount(awards.cell(awards.max_row, amount_column + 1), award.amount)

    assessments = book.create_sheet("Assessments")
    header(assessments, ASSESSMENT_COLUMNS, (12, 7, 9, 24, 9, 66, 30, 66, 20))
    for head in export.assessments:
        append(assessments, [head.id, head.year, head.measure, head.policy_id,
                             head.policy_version, head.policy_sha256, head.code_version,
                             head.inputs_sha256,
                             head.created_at.astimezone(SHANGHAI).replace(tzinfo=None)])
        assessments.cell(assessments.max_row, len(ASSESSMENT_COLUMNS)).number_format = (
            "yyyy-mm-dd hh:mm:ss")

    sheet = book.create_sheet("Parameters")
    header(sheet, PARAMETER_COLUMNS, (24, 9, 9, 24, 16, 22, 16, 11, 80))
    for head, p in parameters(export):
        append(sheet, [head.policy_id, head.policy_version, head.measure, p.name,
                       str(p.value), p.unit, p.per, yes(p.assumption), p.note])

    sheet = book.create_sheet("Figures")
    header(sheet, FIGURE_COLUMNS, (10, 9, 24, 24, 30, 18, 11, 80))
    for award in export.awards:
        for figure in award.figures:
            append(sheet, [award.id, award.measure, award.enterprise, award.data_centre or "",
                           figure["name"], figure["value"], figure["source"],
                           figure["detail"]])

    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def header(sheet: Worksheet, columns: Sequence[str], widths: Sequence[int]) -> None:
    from openpyxl.styles import Font

    sheet.append(list(columns))
    for cell, width in zip(sheet[1], widths, strict=True):
        cell.font = Font(bold=True)
        sheet.column_dimensions[cell.column_letter].width = width
    sheet.freeze_panes = "A2"


def append(sheet: Worksheet, cells: list[Any]) -> None:
    """Append a row; a text that openpyxl took for a formula stays text, and a control
    character the XLSX's XML cannot hold (the store takes it in a name) shows as U+FFFD rather
    than failing the whole file."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    sheet.append([ILLEGAL_CHARACTERS_RE.sub("\ufffd", cell) if isinstance(cell, str) else cell
                  for cell in cells])
    for cell in sheet[sheet.max_row]:
        if cell.data_type == "f":
            cell.data_type = "s"


def exact_amount(cell: Cell, amount: Decimal) -> None:
    """A number cell holding ``amount``'s exact text ("13.78"), shown with two decimals."""
    cell.value = fen_text(amount)  # a string: openpyxl stores it as given...
    cell.data_type = "n"  # ...and as a number, which Excel reads from that text
    cell.number_format = AMOUNT_FORMAT
