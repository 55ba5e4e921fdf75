"""What the report's sections draw on: the month's figures, the document, and its charts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dashboards.report.figures import MonthFigures
from dashboards.report.month import Month
from jinsuan.kernel.pdf.layout import Document, display_width

CHART_HEIGHT = 3.0

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
