"""Write the monthly report: fetch the figures, draw the pages and charts, save PDF and PNGs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import matplotlib
import psycopg
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from dashboards import grafana
from dashboards.report import sections
from dashboards.report.figures import ENERGY, MonthFigures, fetch
from dashboards.report.fonts import CjkFont, find_cjk_font, no_missing_glyphs
from dashboards.report.layout import Document, display_width
from dashboards.report.month import SHANGHAI, Month

CHART_HEIGHT = 3.0
STYLE = {"pdf.fonttype": 42,  # TrueType in the PDF: real text, searchable and extractable
         "axes.labelsize": 8, "axes.edgecolor": "#8e949c", "axes.labelcolor": "#1f2328"}


@dataclass(frozen=True, slots=True)
class Written:
    pdf: Path
    charts: list[Path]
    font: CjkFont
    pages: int


@dataclass
class Report:
    """What the sections draw on: the figures, the document, and where charts are saved."""

    figures: MonthFigures
    doc: Document
    out: Path
    target: Decimal
    generated: datetime
    source: str
    charts: list[Path] = field(default_factory=list)

    @property
    def month(self) -> Month:
        return self.figures.month

    @property
    def stem(self) -> str:
        return f"jinsuan-report-{self.month.label}"

    def chart(self, name: str, title: str, draw: Callable[[Axes, MonthFigures], None], *,
              caption: str = "", labels: list[str] | None = None, legend: bool = True,
              height: float = CHART_HEIGHT) -> None:
        """Draw a chart on the page, and alone as ``<stem>-<name>.png`` beside the PDF.

        ``labels``: a horizontal bar chart's category labels, to leave them room on the left.
        """
        left = 0.75 if labels is None else 0.25 + max(map(display_width, labels)) * 0.058
        self.doc.subheading(title, keep=height)
        self.doc.chart(lambda ax: draw(ax, self.figures), height, left=left,
                       legend_room=1.7 if legend else 0.3, caption=caption)
        figure = Figure(figsize=(9, max(3.0, height + 0.8)), layout="constrained")
        draw(figure.add_subplot(), self.figures)
        figure.suptitle(f"{title} · {self.month.label}", fontsize=11, x=0.01, ha="left")
        path = self.out / f"{self.stem}-{name}.png"
        figure.savefig(path, dpi=150)
        self.charts.append(path)


def measure4_target() -> Decimal:
    """The PUE line of measure 4, as the energy dashboard draws it (its red threshold)."""
    panel = grafana.panel(grafana.load(ENERGY), "PUE per data centre")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    (red,) = [s["value"] for s in steps if s.get("color") == "red"]
    return Decimal(str(red))


def write_report(conn: psycopg.Connection, month: Month, out: Path, *,
                 chosen: Mapping[str, list[str]] | None = None, source: str = "",
                 now: datetime | None = None) -> Written:
    """Write ``jinsuan-report-YYYY-MM.pdf`` and its charts as PNG into ``out``."""
    font = find_cjk_font()
    figures = fetch(conn, month, chosen)
    generated = (now or datetime.now(UTC)).astimezone(SHANGHAI)
    out.mkdir(parents=True, exist_ok=True)
    style = {**STYLE, "font.family": [font.family, "DejaVu Sans"]}
    with matplotlib.rc_context(style), no_missing_glyphs():
        doc = Document(f"晋算 jinsuan · monthly report {month.label} · generated "
                       f"{generated:%Y-%m-%d %H:%M} Beijing time")
        report = Report(figures, doc, out, measure4_target(), generated, source)
        for section in sections.ALL:
            section(report)
        pages = doc.finish()
        pdf = out / f"{report.stem}.pdf"
        metadata = {"Title": f"晋算 jinsuan monthly report {month.label}",
                    "Subject": "Compute capacity, energy and PUE, and jobs, for the month",
                    "Creator": "jinsuan report", "CreationDate": generated}
        with PdfPages(pdf, metadata=metadata) as document:
            for page in pages:
                document.savefig(page)
    return Written(pdf, report.charts, font, len(pages))
