"""The year's rewards as a PDF for the bureau, in the style of the monthly report: a title page
(the year, the policy and its hash, the assessments, the rounding rule, totals), a page per
measure (a bar chart of the awards by enterprise, coloured by state, and their table) and a
page of the parameters the bureau chose. Every amount that rests on such an assumption carries
a dagger (†) and a footnote.

Matplotlib draws everything, one figure per A4 page saved by PdfPages with TrueType text, so
the PDF needs no other library and its text stays searchable; the pages and the font are the
platform's (:mod:`jinsuan.kernel.pdf`), shared with the monthly report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel.pdf.fonts import DRAWING, find_cjk_font, no_missing_glyphs
from jinsuan.kernel.pdf.layout import (
    ACCENT,
    GRID,
    INK,
    MUTED,
    STYLE,
    Column,
    Document,
    display_width,
)
from rewards.exports import AssessmentHead, ExportedAward, YearAwards, parameters, yes

DAGGER = "†"
STATE_COLOURS = {"assessed": "#8e949c", "proposed": "#e0752d", "approved": "#3274d9",
                 "paid": "#56a64b"}
LEGEND_ROOM = 1.3  # inches right of a chart kept for its legend


def report_pdf(export: YearAwards, *, generated: datetime) -> bytes:
    """The PDF of ``export``; :class:`Unavailable` when the platform has no Chinese font."""
    family = find_cjk_font().family
    when = generated.astimezone(SHANGHAI)
    with DRAWING, matplotlib.rc_context({**STYLE, "font.family": [family, "DejaVu Sans"]}), \
            no_missing_glyphs():
        doc = Document(f"晋算 jinsuan · rewards {export.year} · generated "
                       f"{when:%Y-%m-%d %H:%M} Beijing time")
        _title_page(doc, export, when)
        for head in export.assessments:
            _measure_page(doc, export, head)
        _assumptions_page(doc, export)
        out = io.BytesIO()
        metadata = {"Title": f"晋算 jinsuan rewards {export.year}",
                    "Subject": "Assessed awards of the compute policy, by measure",
                    "Creator": "jinsuan rewards", "CreationDate": when}
        with PdfPages(out, metadata=metadata) as pdf:
            for page in doc.finish():
                pdf.savefig(page)
    return out.getvalue()


# --- what is written ----------------------------------------------------------------------------

def amount_text(award: ExportedAward) -> str:
    """The amount with thousands separators, exact, and a dagger when it rests on an assumption."""
    return f"{award.amount:,.2f}" + (DAGGER if award.rests_on_assumptions else "")


def _total(awards: Sequence[ExportedAward]) -> str:
    total = sum((a.amount for a in awards), Decimal("0.00"))
    return f"{total:,.2f}" + (DAGGER if any(a.rests_on_assumptions for a in awards) else "")


def _who(award: ExportedAward) -> str:
    return award.enterprise + (f" · {award.data_centre}" if award.data_centre else "")


def _title_page(doc: Document, export: YearAwards, when: datetime) -> None:
    heads = export.assessments
    doc.y += 0.5
    doc.paragraph("晋算 jinsuan · Shanxi integrated compute platform", size=11, color=MUTED)
    doc.paragraph(f"Rewards {export.year}", size=24, color=ACCENT)
    doc.paragraph(f"Assessed awards for the Data Bureau (数据局) under {heads[0].policy.document}",
                  size=12)
    if export.enterprise is not None:
        doc.paragraph(f"Restricted to {export.enterprise}: this copy lists its awards only.",
                      size=10, color=ACCENT)
    doc.y += 0.1
    window = heads[0].policy.window(export.year)
    items = [f"Year: {export.year}, the Asia/Shanghai calendar year; inside the policy's dates"
             f" from {window[0]} to {window[1]}." if window else f"Year: {export.year}."]
    policies = {h.policy_sha256: h for h in heads}
    items += [f"Policy: {h.policy_id} version {h.policy_version}, sha256 {h.policy_sha256}."
              for h in policies.values()]
    items += [f"Assessment {h.id}, measure {h.measure}: made "
              f"{h.created_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M} Beijing time; inputs sha256 "
              f"{h.inputs_sha256}; code {h.code_version}." for h in heads]
    items += [f"Rounding: {h.policy.rounding}." for h in policies.values()]
    items.append(f"Generated: {when:%Y-%m-%d %H:%M:%S} Beijing time.")
    doc.bullets(items)
    doc.subheading("Awards by measure", keep=1.0)
    rows = [{"head": h, "awards": export.of(h.measure)} for h in heads]
    doc.table([
        Column("measure", lambda r: r["head"].measure, 0.09),
        Column("title", lambda r: r["head"].title, 0.43),
        Column("assessment", lambda r: str(r["head"].id), 0.12, "right"),
        Column("awards", lambda r: str(len(r["awards"])), 0.09, "right"),
        Column("eligible", lambda r: str(sum(a.eligible for a in r["awards"])), 0.09, "right"),
        Column("total, yuan", lambda r: _total(r["awards"]), 0.18, "right"),
    ], rows)
    _footnote(doc, export.awards)


def _measure_page(doc: Document, export: YearAwards, head: AssessmentHead) -> None:
    awards = export.of(head.measure)
    doc.new_page()
    doc.heading(f"Measure {head.measure}: {head.title}")
    doc.paragraph(f"Basis: {head.policy.measures[head.measure].basis}.", color=MUTED)
    if not awards:
        doc.paragraph(f"{export.year}: no award for this measure"
                      + (f" to {export.enterprise}." if export.enterprise else "."), size=10)
        return
    doc.paragraph(f"{len(awards)} awards, {sum(a.eligible for a in awards)} eligible, "
                  f"{_total(awards)} yuan in all.")
    labels = [_who(a) for a in awards]
    left = 0.3 + max(map(display_width, labels)) * 0.058
    doc.subheading("Awards by enterprise, coloured by state", keep=1.5)
    doc.chart(lambda ax: _bars(ax, awards, labels), min(1.0 + 0.32 * len(awards), 7.5),
              left=left, legend_room=LEGEND_ROOM)
    doc.table([
        Column("award", lambda a: str(a.id), 0.07, "right"),
        Column("enterprise", lambda a: a.enterprise, 0.15),
        Column("data centre", lambda a: a.data_centre or "", 0.14),
        Column("amount, yuan", amount_text, 0.14, "right"),
        Column("eligible", lambda a: yes(a.eligible), 0.08, "center"),
        Column("state", lambda a: a.state + (f"\n{a.payment_reference}"
                                             if a.payment_reference else ""), 0.16),
        Column("why", lambda a: "; ".join(a.reasons), 0.26),
    ], awards)
    _footnote(doc, awards)


def _footnote(doc: Document, awards: Sequence[ExportedAward]) -> None:
    """The dagger's footnote, naming the assumptions, under a table with a dagger in it."""
    resting = [a for a in awards if a.rests_on_assumptions]
    if resting:
        names = sorted({n for a in resting for n in a.assumptions})
        listed = f" ({', '.join(names)})" if names else ""
        doc.paragraph(f"{DAGGER} The amount rests on an assumption: a parameter the bureau chose"
                      f" where the policy sets none{listed}; see \"Assumptions\" at the end.",
                      size=7.5, color=MUTED)


def _bars(ax: Axes, awards: Sequence[ExportedAward], labels: list[str]) -> None:
    """One bar per award, first at the top; its length is drawn from a float, its label is
    the exact amount."""
    places = list(range(len(awards)))[::-1]
    amounts = [float(a.amount) for a in awards]
    ax.barh(places, amounts, color=[STATE_COLOURS[a.state] for a in awards], height=0.6)
    ax.set_yticks(places, labels)
    for place, award, length in zip(places, awards, amounts, strict=True):
        ax.text(length, place, " " + amount_text(award), va="center", fontsize=7.5, color=INK)
    ax.set_xlim(0, max(amounts) * 1.3 or 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_xlabel("yuan")
    ax.grid(True, axis="x", color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    states = [s for s in STATE_COLOURS if any(a.state == s for a in awards)]
    ax.legend(handles=[Patch(color=STATE_COLOURS[s], label=s) for s in states], fontsize=8,
              frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _assumptions_page(doc: Document, export: YearAwards) -> None:
    doc.new_page()
    doc.heading("Assumptions: the parameters the bureau chose")
    doc.paragraph("Where the policy leaves a figure to the bureau, the policy file marks it an "
                  f"assumption and says why. Every amount marked {DAGGER} rests on one or more "
                  "of these.")
    rows = [(head, p) for head, p in parameters(export) if p.assumption]
    if not rows:
        doc.paragraph("None: every parameter of the assessed measures is the policy's own.")
        return
    doc.table([
        Column("parameter", lambda r: r[1].name, 0.21),
        Column("value", lambda r: " ".join(filter(None, (str(r[1].value), r[1].unit))), 0.17),
        Column("per", lambda r: r[1].per, 0.11),
        Column("note", lambda r: r[1].note, 0.51),
    ], rows)
