"""A4 pages built top to bottom: headings, wrapped text, key figures, charts and tables.

Matplotlib draws everything (one figure per page, saved by PdfPages), so the PDF needs no
other library and its text stays text: searchable, and extractable by the tests.
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 0.75, 0.7, 0.75
WIDTH = PAGE_W - 2 * MARGIN_X
INK = "#1f2328"
MUTED = "#5a6270"
RULE = "#c7cbd1"
STRIPE = "#f3f5f7"
ACCENT = "#1f4e8c"
GRID = "#d8d9da"
POINTS_PER_INCH = 72
STYLE = {"pdf.fonttype": 42,  # TrueType in the PDF: real text, searchable and extractable
         "axes.labelsize": 8, "axes.edgecolor": "#8e949c", "axes.labelcolor": INK}


def display_width(text: str) -> int:
    """Width in half-em cells: a Chinese character counts as two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def wrap(text: str, size: float, width_in: float) -> list[str]:
    """Lines of ``text`` that fit ``width_in`` inches at ``size`` points (an estimate)."""
    cells = max(10, int(width_in * POINTS_PER_INCH / (size * 0.5)))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words, line = paragraph.split(" "), ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if display_width(candidate) <= cells or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.extend(textwrap.wrap(line, cells) if display_width(line) > cells * 1.5 else [line])
    return lines


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    cell: Callable[[Any], str]
    width: float  # share of the table's width
    align: str = "left"


class Document:
    """Pages filled from the top; a block that does not fit starts a new page."""

    def __init__(self, footer: str) -> None:
        self.footer = footer
        self.pages: list[Figure] = []
        self.y = 0.0  # inches from the top of the current page
        self._new_page()

    @property
    def page(self) -> Figure:
        return self.pages[-1]

    def _new_page(self) -> None:
        self.pages.append(Figure(figsize=(PAGE_W, PAGE_H)))
        self.y = MARGIN_TOP

    def _room(self, height: float) -> None:
        if self.y + height > PAGE_H - MARGIN_BOTTOM and self.y > MARGIN_TOP:
            self._new_page()

    def new_page(self) -> None:
        if self.y > MARGIN_TOP:
            self._new_page()

    def _text(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        self.page.text(x / PAGE_W, 1 - y / PAGE_H, text, va="top", **kwargs)

    def heading(self, text: str, size: float = 15) -> None:
        for line in wrap(text, size, WIDTH):
            self._room(size / POINTS_PER_INCH * 2 + 1.5)  # never alone at the foot of a page
            self._text(MARGIN_X, self.y, line, fontsize=size, color=ACCENT)
            self.y += size / POINTS_PER_INCH * 1.5
        self.page.add_artist(_rule(self.y, ACCENT, 1.0))
        self.y += 0.15

    def subheading(self, text: str, keep: float = 1.0) -> None:
        """A block's title, kept on one page with the first ``keep`` inches of the block."""
        self._room(0.3 + keep)
        self._text(MARGIN_X, self.y, text, fontsize=11, color=INK)
        self.y += 0.3

    def paragraph(self, text: str, size: float = 9, color: str = INK, indent: float = 0) -> None:
        step = size / POINTS_PER_INCH * 1.45
        for line in wrap(text, size, WIDTH - indent):
            self._room(step)
            self._text(MARGIN_X + indent, self.y, line, fontsize=size, color=color)
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

    def tiles(self, figures: Sequence[tuple[str, str]], per_row: int = 3) -> None:
        """Key figures as Grafana-like stat tiles: a large value over its label."""
        height, gap = 0.85, 0.12
        tile_w = (WIDTH - gap * (per_row - 1)) / per_row
        for start in range(0, len(figures), per_row):
            self._room(height + gap)
            for column, (label, value) in enumerate(figures[start:start + per_row]):
                x = MARGIN_X + column * (tile_w + gap)
                ax = self._axes(x, self.y, tile_w, height)
                ax.set_facecolor(STRIPE)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color(RULE)
                ax.text(0.5, 0.60, value, ha="center", va="center", fontsize=16, color=ACCENT,
                        transform=ax.transAxes)
                ax.text(0.5, 0.20, label, ha="center", va="center", fontsize=7.5, color=MUTED,
                        transform=ax.transAxes)
            self.y += height + gap
        self.y += 0.1

    def chart(self, draw: Callable[[Axes], None], height: float, *, left: float = 0.75,
              legend_room: float = 1.7, caption: str = "") -> None:
        """Axes ``height`` inches tall (labels included); ``left`` and ``legend_room`` are the
        inches kept for the y tick labels and for a legend right of the plot."""
        bottom_room = 0.45
        self._room(height + (0.3 if caption else 0))
        ax = self._axes(MARGIN_X + left, self.y + 0.05, WIDTH - left - legend_room,
                        height - bottom_room)
        draw(ax)
        self.y += height
        if caption:
            self.paragraph(caption, size=7.5, color=MUTED)
        self.y += 0.1

    def table(self, columns: Sequence[Column], rows: Sequence[Any],
              size: float = 7.5) -> None:
        step = size / POINTS_PER_INCH * 1.9
        self._table_header(columns, size, step)
        for index, row in enumerate(rows):
            cells = [wrap(c.cell(row), size, c.width * WIDTH - 0.1) for c in columns]
            height = step * max(len(lines) for lines in cells)
            if self.y + height > PAGE_H - MARGIN_BOTTOM:
                self._new_page()
                self._table_header(columns, size, step)
            if index % 2:
                self._band(self.y, height, STRIPE)
            self._cells(columns, cells, size, step, color=INK)
            self.y += height
        self.page.add_artist(_rule(self.y, RULE, 0.8))
        self.y += 0.2

    def _table_header(self, columns: Sequence[Column], size: float, step: float) -> None:
        cells = [wrap(c.title, size, c.width * WIDTH - 0.1) for c in columns]
        height = step * max(len(lines) for lines in cells)
        self._room(height + step * 2)
        self._cells(columns, cells, size, step, color=MUTED)
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

    def _band(self, y: float, height: float, colour: str) -> None:
        self.page.add_artist(Rectangle((MARGIN_X / PAGE_W, 1 - (y + height) / PAGE_H),
                                       WIDTH / PAGE_W, height / PAGE_H, facecolor=colour,
                                       edgecolor="none", zorder=1))

    def _axes(self, x: float, y: float, width: float, height: float) -> Axes:
        """Axes at ``x`` inches from the left and ``y`` from the top of the page."""
        return self.page.add_axes((x / PAGE_W, 1 - (y + height) / PAGE_H, width / PAGE_W,
                                   height / PAGE_H))

    def finish(self) -> list[Figure]:
        """The pages, each with its footer and page number."""
        total = len(self.pages)
        for number, page in enumerate(self.pages, start=1):
            page.add_artist(_rule(PAGE_H - MARGIN_BOTTOM + 0.2, RULE, 0.6))
            page.text(MARGIN_X / PAGE_W, 0.4 / PAGE_H, self.footer, fontsize=7, color=MUTED)
            page.text(1 - MARGIN_X / PAGE_W, 0.4 / PAGE_H, f"page {number} of {total}",
                      fontsize=7, color=MUTED, ha="right")
        return self.pages


def _rule(y: float, colour: str, width: float) -> Line2D:
    """A horizontal line across the text width, ``y`` inches from the top."""
    return Line2D([MARGIN_X / PAGE_W, 1 - MARGIN_X / PAGE_W], [1 - y / PAGE_H] * 2,
                  color=colour, linewidth=width)
