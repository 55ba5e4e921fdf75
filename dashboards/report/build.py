"""Write the monthly report: fetch the figures, draw the pages and charts, save PDF and PNGs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import matplotlib
import psycopg
from matplotlib.backends.backend_pdf import PdfPages

from dashboards import grafana
from dashboards.report import sections
from dashboards.report.canvas import Report
from dashboards.report.figures import ENERGY, fetch
from dashboards.report.month import Month
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel.pdf.fonts import CjkFont, find_cjk_font, no_missing_glyphs
from jinsuan.kernel.pdf.layout import STYLE, Document


@dataclass(frozen=True, slots=True)
class Written:
    pdf: Path
    charts: list[Path]
    font: CjkFont
    pages: int


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
