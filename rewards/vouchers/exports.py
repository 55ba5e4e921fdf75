"""Voucher statements as files: an applicant's (every voucher it holds: issued, drawn, balance,
each usage record decided against it, drawn or not and why) and a provider's for a settlement
period (each draw traced to its usage record, run, job, voucher and applicant; settled or not),
as CSV, XLSX and PDF.

The figures are :mod:`rewards.vouchers.settling`'s (balances from the ledger), laid out once as
the lines of a :class:`Statement`; the three writers only render them. The rules of the
rewards' own files hold, and are theirs: the CSV's byte-order mark and formula guard and the
XLSX's exact ``Decimal`` cells (:mod:`rewards.exports`), the PDF's pages, font and tables
(:mod:`rewards.report`, imported when a PDF is drawn: the platform starts without matplotlib).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from jinsuan.contract.policytime import SHANGHAI
from rewards.exports import CSV_TYPE, PDF_TYPE, XLSX_TYPE, append, csv_bytes, exact_amount, header
from rewards.vouchers import parties, settling

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from openpyxl.worksheet.worksheet import Worksheet

    from jinsuan.kernel.pdf.layout import Column

Format = Literal["csv", "xlsx", "pdf"]
MEDIA_TYPES: dict[str, str] = {"csv": CSV_TYPE, "xlsx": XLSX_TYPE, "pdf": PDF_TYPE}

APPLICANT_COLUMNS = (
    "line", "voucher", "provider", "contract", "pool year", "rate", "state", "valid from",
    "valid until", "issued (yuan)", "drawn (yuan)", "balance (yuan)",
    "returned to pool (yuan)", "usage record", "run", "job", "usage cost (yuan)",
    "amount (yuan)", "reason", "at (Beijing time)", "ledger entry")
PROVIDER_COLUMNS = (
    "line", "usage record", "run", "job", "voucher", "applicant", "usage cost (yuan)",
    "amount (yuan)", "reason", "drawn at (Beijing time)", "ledger entry", "settlement",
    "paid on")
WIDTHS = {"reason": 50, "run": 26, "job": 22, "provider": 24, "applicant": 24, "contract": 16,
          "line": 14, "at (Beijing time)": 20, "drawn at (Beijing time)": 20}


@dataclass(frozen=True, slots=True)
class PdfTable:
    """A table of the PDF: the lines of some kinds, some columns (name, share of the width)."""

    heading: str
    kinds: tuple[str, ...]
    columns: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Statement:
    """What a statement file holds. ``lines`` are cells in ``columns`` order, amounts as
    ``Decimal``; their first cell says what the line is ("voucher", "draw", "nothing drawn",
    "given back", a total). ``facts`` and ``totals`` are the summary, ``bars`` the PDF's
    chart."""

    kind: str  # "applicant" or "provider"
    party: str
    period: str
    facts: tuple[tuple[str, str], ...]
    columns: tuple[str, ...]
    lines: tuple[tuple[Any, ...], ...]
    totals: tuple[tuple[str, Decimal], ...]
    bars: tuple[tuple[str, Decimal], ...]
    bars_title: str
    tables: tuple[PdfTable, ...]
    filename: str  # without the extension; ASCII


def _line_kind(amount: Decimal) -> str:
    return "draw" if amount > 0 else "given back" if amount < 0 else "nothing drawn"


def _beijing(moment: datetime | None) -> datetime | None:
    """A timestamp as Beijing wall time to the second (what the files show)."""
    if moment is None:
        return None
    return moment.astimezone(SHANGHAI).replace(tzinfo=None, microsecond=0)


def applicant_statement(conn: psycopg.Connection, applicant_id: int) -> Statement:
    """Every voucher of the applicant, each followed by the usage records decided against it;
    then one total line. Issued = drawn + balance + returned to the pool, per voucher."""
    who = parties.applicant(conn, applicant_id)
    vouchers = [settling.voucher_statement(conn, row[0]) for row in conn.execute(
        "SELECT id FROM vouchers WHERE applicant_id = %s ORDER BY id", (applicant_id,))]
    lines: list[tuple[Any, ...]] = []
    sums = dict.fromkeys(("issued", "drawn", "balance", "returned to the pool"),
                         Decimal("0.00"))
    for v in vouchers:
        returned = v["face_value"] - v["drawn"] - v["balance"]
        for name, amount in zip(sums, (v["face_value"], v["drawn"], v["balance"], returned),
                                strict=True):
            sums[name] += amount
        lines.append(("voucher", v["id"], v["provider"], v["contract_id"], v["pool_year"],
                      v["rate"], v["state"], v["valid_from"], v["valid_until"], v["face_value"],
                      v["drawn"], v["balance"], returned, None, None, None, None, None,
                      v["end_reason"] or None, None, None))
        for d in v["draws"]:
            lines.append((_line_kind(d["amount"]), v["id"], v["provider"], v["contract_id"],
                          v["pool_year"], v["rate"], None, None, None, None, None, None, None,
                          d["usage_record"], d["run"], d["job"], d["usage_cost"], d["amount"],
                          d["reason"], _beijing(d["drawn_at"]), d["ledger_entry"]))
    lines.append(("total", None, None, None, None, None, None, None, None, *sums.values(),
                  None, None, None, None, None, None, None, None))
    years = sorted({v["pool_year"] for v in vouchers})
    period = ("no voucher issued" if not years else f"pool year {years[0]}"
              if len(years) == 1 else f"pool years {years[0]} to {years[-1]}")
    return Statement(
        kind="applicant", party=who.name, period=period,
        facts=(("applicant", f"{who.id}, credit code {who.credit_code}"),
               ("kind", f"{who.kind.replace('_', ' ')}, "
                        f"{'in Shanxi' if who.in_province else 'outside Shanxi'}"),
               ("vouchers", str(len(vouchers)))),
        columns=APPLICANT_COLUMNS, lines=tuple(lines), totals=tuple(sums.items()),
        bars=tuple((f"voucher {v['id']} · {v['provider']}", v["drawn"]) for v in vouchers),
        bars_title="Drawn, by voucher",
        tables=(
            PdfTable("Vouchers", ("voucher", "total"), (
                ("line", 0.08), ("voucher", 0.06), ("provider", 0.14), ("contract", 0.1),
                ("state", 0.08), ("valid until", 0.1), ("issued (yuan)", 0.11),
                ("drawn (yuan)", 0.11), ("balance (yuan)", 0.11),
                ("returned to pool (yuan)", 0.11))),
            PdfTable("Usage records against the vouchers",
                     ("draw", "given back", "nothing drawn"), (
                         ("voucher", 0.07), ("usage record", 0.08), ("job", 0.19),
                         ("usage cost (yuan)", 0.1), ("amount (yuan)", 0.1), ("reason", 0.32),
                         ("at (Beijing time)", 0.14)))),
        filename=f"jinsuan-voucher-statement-applicant-{who.id}")


def provider_statement(conn: psycopg.Connection, provider_id: int, day: date) -> Statement:
    """The draws on the provider's vouchers in the settlement period holding ``day``, then
    its totals: drawn, not yet settled, and the receivable of all periods now."""
    found = settling.provider_statement(conn, provider_id, day)
    first, last = found["period"]
    name, code = conn.execute("SELECT name, credit_code FROM enterprises WHERE id = %s",
                              (provider_id,)).fetchone()  # type: ignore[misc]
    draws = found["draws"]
    applicants = dict(conn.execute(
        "SELECT id, name FROM voucher_applicants WHERE id = ANY(%s)",
        ([d["applicant"] for d in draws],)).fetchall())
    settlements = {row[0]: row[1:] for row in conn.execute(
        "SELECT id, amount, paid_at, paid_reference FROM voucher_settlements"
        " WHERE id = ANY(%s) OR (provider_id = %s AND period_start = %s) ORDER BY id",
        ([d["settlement"] for d in draws], provider_id, first))}

    def paid_on(settlement: int | None) -> date | None:
        paid = settlements[settlement][1] if settlement is not None else None
        return paid.astimezone(SHANGHAI).date() if paid is not None else None

    lines: list[tuple[Any, ...]] = [
        (_line_kind(d["amount"]), d["usage_record"], d["run"], d["job"], d["voucher"],
         applicants[d["applicant"]], d["usage_cost"], d["amount"], d["reason"],
         _beijing(d["drawn_at"]), d["ledger_entry"], d["settlement"], paid_on(d["settlement"]))
        for d in draws]
    totals = (("drawn in the period", found["total"]),
              ("settled", found["total"] - found["unsettled"]),
              ("not yet settled", found["unsettled"]),
              ("receivable now, all periods", found["receivable_balance"]))
    lines += [(label, *[None] * 6, amount, *[None] * 5) for label, amount in totals]
    described = [f"settlement {n}: {amount} yuan, " + (
        f"paid on {paid.astimezone(SHANGHAI).date()} (reference {reference})" if paid
        else "not paid yet") for n, (amount, paid, reference) in settlements.items()]
    drawn_by: dict[str, Decimal] = {}
    for d in draws:
        who = applicants[d["applicant"]]
        drawn_by[who] = drawn_by.get(who, Decimal("0.00")) + d["amount"]
    return Statement(
        kind="provider", party=name, period=f"settlement period {first} to {last}",
        facts=(("provider", f"{provider_id}, credit code {code or 'not recorded'}"),
               ("draws", str(len(draws))),
               ("settlements", "; ".join(described) or "none for this period yet")),
        columns=PROVIDER_COLUMNS, lines=tuple(lines), totals=totals,
        bars=tuple(drawn_by.items()), bars_title="Drawn in the period, by applicant",
        tables=(PdfTable("Draws", ("draw", "given back"), (
            ("usage record", 0.07), ("run", 0.18), ("job", 0.18), ("voucher", 0.06),
            ("applicant", 0.13), ("amount (yuan)", 0.1), ("drawn at (Beijing time)", 0.12),
            ("settlement", 0.07), ("paid on", 0.09))),),
        filename=f"jinsuan-voucher-statement-provider-{provider_id}-{first}")


def render(statement: Statement, kind: Format, *, generated: datetime) -> bytes:
    """The statement as a file of ``kind``; ``generated`` is when, for the PDF's title."""
    if kind == "csv":
        return statement_csv(statement)
    if kind == "xlsx":
        return statement_xlsx(statement)
    return statement_pdf(statement, generated=generated)


def statement_csv(statement: Statement) -> bytes:
    """The lines under :attr:`Statement.columns`, totals last (as the rewards' CSV: BOM,
    formula guard, amounts to the fen)."""
    return csv_bytes(statement.columns, statement.lines)


def statement_xlsx(statement: Statement) -> bytes:
    """Sheets "Statement" (the CSV's lines, amounts as exact number cells) and "Summary" (the
    party, what it covers, the facts and the totals)."""
    from openpyxl import Workbook  # here: the platform starts without loading it

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Statement"
    header(sheet, statement.columns, [WIDTHS.get(c, 12) for c in statement.columns])
    for line in statement.lines:
        _exact_row(sheet, list(line))
    summary = book.create_sheet("Summary")
    header(summary, ("item", "value"), (30, 80))
    for row in (("statement", f"{statement.kind}'s compute vouchers"),
                ("party", statement.party), ("covers", statement.period),
                *statement.facts, *statement.totals):
        _exact_row(summary, list(row))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _exact_row(sheet: Worksheet, cells: list[Any]) -> None:
    """Append a row whose ``Decimal`` cells hold their exact text."""
    amounts = {n: v for n, v in enumerate(cells) if isinstance(v, Decimal)}
    append(sheet, [None if n in amounts else v for n, v in enumerate(cells)])
    for n, amount in amounts.items():
        exact_amount(sheet.cell(sheet.max_row, n + 1), amount)


def statement_pdf(statement: Statement, *, generated: datetime) -> bytes:
    """A4 pages: the title (the party, what it covers, when it was made), the facts, the
    totals, a bar chart and the tables; :class:`Unavailable` without a Chinese font."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    from jinsuan.kernel.pdf.fonts import DRAWING, find_cjk_font, no_missing_glyphs
    from jinsuan.kernel.pdf.layout import ACCENT, MUTED, STYLE, Column, Document, display_width
    from rewards.report import LEGEND_ROOM

    family = find_cjk_font().family
    when = generated.astimezone(SHANGHAI)
    with DRAWING, matplotlib.rc_context({**STYLE, "font.family": [family, "DejaVu Sans"]}), \
            no_missing_glyphs():
        doc = Document(f"晋算 jinsuan · voucher statement · {statement.party} · "
                       f"generated {when:%Y-%m-%d %H:%M} Beijing time")
        doc.y += 0.3
        doc.paragraph("晋算 jinsuan · compute vouchers (算力券, measure 9)", size=11,
                      color=MUTED)
        doc.paragraph(f"Voucher statement: {statement.party}", size=20, color=ACCENT)
        doc.paragraph(f"{statement.kind.capitalize()}, {statement.period}", size=12)
        doc.bullets([f"{label.capitalize()}: {value}." for label, value in statement.facts]
                    + [f"Generated: {when:%Y-%m-%d %H:%M:%S} Beijing time; balances are"
                       " the ledger's at that moment."])
        doc.subheading("Totals", keep=0.3 * len(statement.totals))
        doc.table([Column("", lambda row: row[0], 0.6),
                   Column("yuan", lambda row: _pdf_text(row[1]), 0.4, "right")],
                  statement.totals)
        bars = [b for b in statement.bars if b[1] != 0]
        if bars:
            labels = [label for label, _ in bars]
            doc.subheading(statement.bars_title, keep=1.5)
            doc.chart(_bar_chart(bars), min(1.0 + 0.32 * len(bars), 6.0),
                      left=0.3 + max(map(display_width, labels)) * 0.058,
                      legend_room=LEGEND_ROOM)
        for table in statement.tables:
            rows = [line for line in statement.lines if line[0] in table.kinds]
            doc.subheading(table.heading)
            if not rows:
                doc.paragraph("None.")
                continue
            doc.table([_column(statement.columns.index(name), name, width)
                       for name, width in table.columns], rows)
        out = io.BytesIO()
        metadata = {"Title": f"晋算 jinsuan voucher statement: {statement.party}",
                    "Subject": f"Compute vouchers, {statement.period}",
                    "Creator": "jinsuan rewards", "CreationDate": when}
        with PdfPages(out, metadata=metadata) as pdf:
            for page in doc.finish():
                pdf.savefig(page)
    return out.getvalue()


def _column(at: int, name: str, width: float) -> Column:
    """A PDF table column showing the cell ``at`` of each line; amounts and ids to the right."""
    from jinsuan.kernel.pdf.layout import Column

    right = name.endswith("(yuan)") or name in ("voucher", "usage record", "ledger entry",
                                                 "settlement")
    return Column(name, lambda line: _pdf_text(line[at]), width,  # type: ignore[index]
                  "right" if right else "left")


def _pdf_text(value: Any) -> str:
    """A cell as the PDF shows it: amounts exact with thousands separators."""
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return "" if value is None else str(value)


def _bar_chart(bars: Sequence[tuple[str, Decimal]]) -> Callable[[Axes], None]:
    """One bar per label, first at the top, each labelled with its exact amount."""
    from matplotlib.ticker import FuncFormatter

    from jinsuan.kernel.pdf.layout import ACCENT, GRID, INK

    def draw(ax: Axes) -> None:
        places = list(range(len(bars)))[::-1]
        lengths = [float(amount) for _, amount in bars]  # the drawing only; labels are exact
        ax.barh(places, lengths, color=ACCENT, height=0.6)
        ax.set_yticks(places, [label for label, _ in bars])
        for place, (_, amount), length in zip(places, bars, lengths, strict=True):
            ax.text(max(length, 0), place, f" {amount:,.2f}", va="center", fontsize=7.5,
                    color=INK)
        ax.set_xlim(min(0, *lengths), max(0, *lengths) * 1.3 or 1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.2f}"))
        ax.set_xlabel("yuan")
        ax.grid(True, axis="x", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(labelsize=8)

    return draw
