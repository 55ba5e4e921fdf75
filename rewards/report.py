"""The year's rewards as a PDF for the bureau, in the style of the monthly report: a title page
(the year, the policy and its hash, the assessments, the rounding rule, totals), a page per
measure (a bar chart of the awards by enterprise, coloured by state, and their table) and a
page of the parameters the bureau chose. Every amount that rests on such an assumption carries
a dagger (†) and a footnote.

Matplotlib draws everything, one figure per A4 page saved by PdfPages with TrueType text, so
the PDF needs no other library and its text stays searchable. Rooms never import each other, so
the small part of ``dashboards.report`` needed here (finding a font with Chinese glyphs, the A4
page filled from the top, wrapped text and tables) is written again below, in the same
measures and colours, rather than shared.
"""

from __future__ import annotations

import io
import os
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache

import matplotlib
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter

from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel.errors import Unavailable
from rewards.exports import AssessmentHead, ExportedAward, YearAwards, parameters, yes

DAGGER = "†"

# The monthly report's font rule: the same variable, the same families in the same order.
FONT_ENV = "JINSUAN_REPORT_FONT"
PREFERRED = (
    "WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC",
    "Source Han Sans CN", "WenQuanYi Zen Hei", "Droid Sans Fallback", "Microsoft YaHei",
    "PingFang SC", "SimHei",
)
SAMPLE = "晋算太原大同数据中心智能〔〕"
FIX = ("install a font with Chinese glyphs on the platform (Debian/Ubuntu: apt-get install "
       f"fonts-wqy-microhei) or set {FONT_ENV} to the path of a .ttf, .otf or .ttc file with them")

# The monthly report's page and colours.
PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 0.75, 0.7, 0.75
WIDTH = PAGE_W - 2 * MARGIN_X
INK, MUTED, RULE, STRIPE, ACCENT = "#1f2328", "#5a6270", "#c7cbd1", "#f3f5f7", "#1f4e8c"
GRID = "#d8d9da"
POINTS_PER_INCH = 72
STATE_COLOURS = {"assessed": "#8e949c", "proposed": "#e0752d", "approved": "#3274d9",
                 "paid": "#56a64b"}
STYLE = {"pdf.fonttype": 42, "axes.labelsize": 8, "axes.edgecolor": "#8e949c",
         "axes.labelcolor": INK}

DRAWING = threading.Lock()
"""Matplotlib's settings and warning filters are process-wide: one PDF is drawn at a time."""


def report_pdf(export: YearAwards, *, generated: datetime) -> bytes:
    """The PDF of ``export``; :class:`Unavailable` when the platform has no Chinese font."""
    family = cjk_family()
    when = generated.astimezone(SHANGHAI)
    with DRAWING, matplotlib.rc_context({**STYLE, "font.family": [family, "DejaVu Sans"]}), \
            no_missing_glyphs():
        doc = Pages()
        _title_page(doc, export, when)
        for head in export.assessments:
            _measure_page(doc, export, head)
        _assumptions_page(doc, export)
        out = io.BytesIO()
        metadata = {"Title": f"晋算 jinsuan rewards {export.year}",
                    "Subject": "Assessed awards of the compute policy, by measure",
                    "Creator": "jinsuan rewards", "CreationDate": when}
        with PdfPages(out, metadata=metadata) as pdf:
            for page in doc.finish(f"晋算 jinsuan · rewards {export.year} · generated "
                                   f"{when:%Y-%m-%d %H:%M} Beijing time"):
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


def _title_page(doc: Pages, export: YearAwards, when: datetime) -> None:
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


def _measure_page(doc: Pages, export: YearAwards, head: AssessmentHead) -> None:
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
    doc.chart(lambda ax: _bars(ax, awards, labels), min(1.0 + 0.32 * len(awards), 7.5), left)
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


def _footnote(doc: Pages, awards: Sequence[ExportedAward]) -> None:
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


def _assumptions_page(doc: Pages, export: YearAwards) -> None:
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


# --- the font -----------------------------------------------------------------------------------

def cjk_family() -> str:
    """The family of a font with Chinese glyphs, registered with matplotlib."""
    return _find_font(os.environ.get(FONT_ENV) or None)


@cache
def _find_font(explicit: str | None) -> str:
    found: dict[str, str] = {}
    for path in [explicit] if explicit else font_manager.findSystemFonts():
        try:
            font = font_manager.get_font(path)
        except (OSError, RuntimeError, ValueError):
            continue
        charmap = font.get_charmap()
        if ((explicit or font.family_name in PREFERRED)
                and all(ord(c) in charmap for c in SAMPLE)):
            found.setdefault(font.family_name, path)
    family = next(iter(found), None) if explicit else next(
        (f for f in PREFERRED if f in found), None)
    if family is None:
        where = f"{FONT_ENV}={explicit!r} is not" if explicit else "the platform has no"
        raise Unavailable(f"{where} a font with Chinese glyphs: {FIX}")
    font_manager.fontManager.addfont(found[family])
    return family


@contextmanager
def no_missing_glyphs() -> Iterator[None]:
    """A glyph missing from the fonts is an error, never an empty box in the PDF."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Glyph \d+ .* missing from font")
        try:
            yield
        except UserWarning as exc:
            if "missing from font" not in str(exc):
                raise
            raise Unavailable(f"the report would draw an empty box: {exc} ({FIX})") from None


# --- the pages ----------------------------------------------------------------------------------

def display_width(text: str) -> int:
    """Width in half-em cells: a Chinese character counts as two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def wrap(text: str, size: float, width_in: float) -> list[str]:
    """Lines of ``text`` that fit ``width_in`` inches at ``size`` points (an estimate); a word
    wider than a line (Chinese has no spaces) is cut between characters."""
    cells = max(10, int(width_in * POINTS_PER_INCH / (size * 0.5)))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if display_width(candidate) <= cells:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while display_width(line) > cells:
                cut = max(1, max(n for n in range(len(line) + 1)
                                 if display_width(line[:n]) <= cells))
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    cell: Callable[[object], str]
    width: float  # share of the text width
    align: str = "left"


class Pages:
    """A4 pages filled from the top; a block that does not fit starts a new page."""

    def __init__(self) -> None:
        self.pages: list[Figure] = []
        self.y = 0.0  # inches from the top of the current page
        self.new_page()

    @property
    def page(self) -> Figure:
        return self.pages[-1]

    def new_page(self) -> None:
        if not self.pages or self.y > MARGIN_TOP:
            self.pages.append(Figure(figsize=(PAGE_W, PAGE_H)))
            self.y = MARGIN_TOP

    def _room(self, height: float) -> None:
        if self.y + height > PAGE_H - MARGIN_BOTTOM and self.y > MARGIN_TOP:
            self.pages.append(Figure(figsize=(PAGE_W, PAGE_H)))
            self.y = MARGIN_TOP

    def _text(self, x: float, y: float, text: str, **kwargs: object) -> None:
        self.page.text(x / PAGE_W, 1 - y / PAGE_H, text, va="top", **kwargs)  # type: ignore[arg-type]

    def heading(self, text: str, size: float = 15) -> None:
        for line in wrap(text, size, WIDTH):
            self._room(size / POINTS_PER_INCH * 2 + 1.5)
            self._text(MARGIN_X, self.y, line, fontsize=size, color=ACCENT)
            self.y += size / POINTS_PER_INCH * 1.5
        self.page.add_artist(_rule(self.y, ACCENT, 1.0))
        self.y += 0.15

    def subheading(self, text: str, keep: float = 1.0) -> None:
        self._room(0.3 + keep)
        self._text(MARGIN_X, self.y, text, fontsize=11, color=INK)
        self.y += 0.3

    def paragraph(self, text: str, size: float = 9, color: str = INK) -> None:
        step = size / POINTS_PER_INCH * 1.45
        for line in wrap(text, size, WIDTH):
            self._room(step)
            self._text(MARGIN_X, self.y, line, fontsize=size, color=color)
            self.y += step
        self.y += step * 0.4

    def bullets(self, items: Sequence[str], size: float = 9) -> None:
        step = size / POINTS_PER_INCH * 1.45
        for item in items:
            for number, line in enumerate(wrap(item, size, WIDTH - 0.2)):
                self._room(step)
                if number == 0:
                    self._text(MARGIN_X, self.y, "•", fontsize=size, color=INK)
                self._text(MARGIN_X + 0.2, self.y, line, fontsize=size, color=INK)
                self.y += step
            self.y += step * 0.25

    def chart(self, draw: Callable[[Axes], None], height: float, left: float) -> None:
        """Axes ``height`` inches tall, labels included, ``left`` inches kept for the y labels
        and 1.3 right of the plot for the legend."""
        self._room(height)
        top = self.y + 0.05
        inner = height - 0.45
        draw(self.page.add_axes((
            (MARGIN_X + left) / PAGE_W, 1 - (top + inner) / PAGE_H,
            (WIDTH - left - 1.3) / PAGE_W, inner / PAGE_H)))
        self.y += height + 0.1

    def table(self, columns: Sequence[Column], rows: Sequence[object], size: float = 7.5
              ) -> None:
        step = size / POINTS_PER_INCH * 1.9
        self._header(columns, size, step)
        for index, row in enumerate(rows):
            cells = [wrap(c.cell(row), size, c.width * WIDTH - 0.1) for c in columns]
            height = step * max(len(lines) for lines in cells)
            if self.y + height > PAGE_H - MARGIN_BOTTOM:
                self._room(PAGE_H)
                self._header(columns, size, step)
            if index % 2:
                self.page.add_artist(Rectangle(
                    (MARGIN_X / PAGE_W, 1 - (self.y + height) / PAGE_H), WIDTH / PAGE_W,
                    height / PAGE_H, facecolor=STRIPE, edgecolor="none", zorder=1))
            self._cells(columns, cells, size, step, INK)
            self.y += height
        self.page.add_artist(_rule(self.y, RULE, 0.8))
        self.y += 0.2

    def _header(self, columns: Sequence[Column], size: float, step: float) -> None:
        cells = [wrap(c.title, size, c.width * WIDTH - 0.1) for c in columns]
        height = step * max(len(lines) for lines in cells)
        self._room(height + step * 2)
        self._cells(columns, cells, size, step, MUTED)
        self.y += height
        self.page.add_artist(_rule(self.y, INK, 0.8))

    def _cells(self, columns: Sequence[Column], cells: Sequence[list[str]], size: float,
               step: float, color: str) -> None:
        x = MARGIN_X
        for column, lines in zip(columns, cells, strict=True):
            width = column.width * WIDTH
            at = {"left": x + 0.05, "right": x + width - 0.05, "center": x + width / 2}
            for number, line in enumerate(lines):
                self._text(at[column.align], self.y + step * 0.25 + number * step, line,
                           fontsize=size, color=color, ha=column.align)
            x += width

    def finish(self, footer: str) -> list[Figure]:
        """The pages, each with the footer and its page number."""
        total = len(self.pages)
        for number, page in enumerate(self.pages, start=1):
            page.add_artist(_rule(PAGE_H - MARGIN_BOTTOM + 0.2, RULE, 0.6))
            page.text(MARGIN_X / PAGE_W, 0.4 / PAGE_H, footer, fontsize=7, color=MUTED)
            page.text(1 - MARGIN_X / PAGE_W, 0.4 / PAGE_H, f"page {number} of {total}",
                      fontsize=7, color=MUTED, ha="right")
        return self.pages


def _rule(y: float, colour: str, width: float) -> Line2D:
    """A horizontal line across the text width, ``y`` inches from the top."""
    return Line2D([MARGIN_X / PAGE_W, 1 - MARGIN_X / PAGE_W], [1 - y / PAGE_H] * 2,
                  color=colour, linewidth=width)
