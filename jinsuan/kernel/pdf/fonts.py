"""A font with Chinese glyphs for the platform's PDFs, found on the machine, never tofu boxes.

City, enterprise and data-centre names are Chinese (太原, 晋能智算). Matplotlib's own fonts
have no CJK glyphs and would draw empty boxes, so a PDF is drawn in a CJK font found among the
system's fonts (WenQuanYi Micro Hei, Debian's ``fonts-wqy-microhei``, first: TrueType outlines,
small) or the file named by ``JINSUAN_REPORT_FONT``. If none is found, :class:`NoCjkFont`
says how to install one, and while a PDF is drawn any glyph missing from the fonts is that
error too (:func:`no_missing_glyphs`), not a box in the PDF.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from matplotlib import font_manager

from jinsuan.kernel.errors import Unavailable

FONT_ENV = "JINSUAN_REPORT_FONT"
#: Families tried in this order; the first installed one that draws :data:`SAMPLE` is used.
PREFERRED = (
    "WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC",
    "Source Han Sans CN", "WenQuanYi Zen Hei", "Droid Sans Fallback", "Microsoft YaHei",
    "PingFang SC", "SimHei",
)
#: Characters every report draws (place names and the platform's own name).
SAMPLE = "晋算太原大同阳泉长治数据中心智能"
FIX = (f"install a font with Chinese glyphs (Debian/Ubuntu: apt-get install fonts-wqy-microhei) "
       f"or set {FONT_ENV} to the path of a .ttf, .otf or .ttc file that has them")


DRAWING = threading.Lock()
"""Matplotlib's settings and warning filters are process-wide: one PDF is drawn at a time in a
process that serves several (the platform's API)."""


class NoCjkFont(Unavailable):
    """No font with Chinese glyphs, or one missing a glyph a PDF needs; says how to fix it."""


@dataclass(frozen=True, slots=True)
class CjkFont:
    path: Path
    family: str


def _family(path: str) -> str | None:
    try:
        return font_manager.get_font(path).family_name
    except (OSError, RuntimeError, ValueError):
        return None


def missing(path: str | Path, text: str) -> str:
    """The characters of ``text`` that the font file has no glyph for."""
    charmap = font_manager.get_font(str(path)).get_charmap()
    return "".join(sorted({c for c in text if not c.isspace() and ord(c) not in charmap}))


def find_cjk_font(environ: Mapping[str, str] = os.environ) -> CjkFont:
    """The font to draw Chinese with, registered with matplotlib; :class:`NoCjkFont` if none."""
    explicit = environ.get(FONT_ENV)
    if explicit:
        path = Path(explicit)
        family = _family(str(path)) if path.is_file() else None
        if family is None:
            raise NoCjkFont(f"{FONT_ENV}={explicit!r} is not a font file matplotlib can read")
        lacking = missing(path, SAMPLE)
        if lacking:
            raise NoCjkFont(f"{FONT_ENV}={explicit!r} ({family}) has no glyphs for "
                              f"{lacking!r}: {FIX}")
        return _register(CjkFont(path, family))
    # A live scan, not matplotlib's cached font list, so a font installed after matplotlib
    # built its cache is found too.
    found: dict[str, Path] = {}
    for name in font_manager.findSystemFonts():
        family = _family(name)
        if family in PREFERRED and family not in found and not missing(name, SAMPLE):
            found[family] = Path(name)
    for family in PREFERRED:
        if family in found:
            return _register(CjkFont(found[family], family))
    raise NoCjkFont(f"no font with Chinese glyphs on this machine: {FIX}")


def _register(font: CjkFont) -> CjkFont:
    font_manager.fontManager.addfont(str(font.path))
    return font


@contextmanager
def no_missing_glyphs() -> Iterator[None]:
    """Turn matplotlib's "Glyph … missing from font(s)" warning into :class:`NoCjkFont`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Glyph \d+ .* missing from font")
        try:
            yield
        except UserWarning as exc:
            if "missing from font" not in str(exc):
                raise
            raise NoCjkFont(f"the PDF would draw an empty box: {exc} ({FIX})") from None
