"""``jinsuan report``: the month's PDF, read back as a person and a machine would read it.

The store is filled by simulated agents through the real intake (two days across the end of
June 2025 in Beijing time, so hours on both sides of the month's edge exist), plus jobs, runs
and usage records written here with known prices. The report is written by the CLI, then its
pages are rendered to PNG and its text extracted (pypdfium2), and the figures in it are checked
against arithmetic done here on the stored rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import psycopg
import pypdfium2 as pdfium
import pytest
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from dashboards.report import parse_month, write_report
from jinsuan.cli import app
from jinsuan.kernel.pdf.fonts import FONT_ENV, NoCjkFont, find_cjk_font, no_missing_glyphs
from tests import simulated_fleet

JUNE = parse_month("2025-06")
FILL_START = datetime(2025, 6, 29, 0, tzinfo=UTC)
FILL_END = datetime(2025, 7, 1, 0, tzinfo=UTC)  # July 1st, 08:00 in Beijing
FEN = Decimal("0.01")
ROOT = Path(__file__).resolve().parent.parent
READONLY_SQL = ROOT / "deploy" / "postgres" / "grafana-readonly.sql"


def _cjk_font_or_skip() -> None:
    try:
        find_cjk_font()
    except NoCjkFont as exc:
        pytest.skip(f"no CJK font on this machine ({exc})")


# --- the month -------------------------------------------------------------------------------

def test_a_month_is_the_beijing_calendar_month_in_utc() -> None:
    assert JUNE.start == datetime(2025, 5, 31, 16, tzinfo=UTC)
    assert JUNE.end == datetime(2025, 6, 30, 16, tzinfo=UTC)
    assert JUNE.last_instant == datetime(2025, 6, 30, 15, 59, 59, 999000, tzinfo=UTC)
    assert JUNE.hours == 720
    december = parse_month("2025-12")
    assert (december.start, december.end) == (datetime(2025, 11, 30, 16, tzinfo=UTC),
                                              datetime(2025, 12, 31, 16, tzinfo=UTC))


@pytest.mark.parametrize(("text", "says"), [
    ("2025-13", "13 is not a month"), ("June", "not in the form YYYY-MM"),
    ("2025-6", "not in the form YYYY-MM"), ("2025-00", "0 is not a month"),
])
def test_a_bad_month_is_refused_by_the_cli_naming_the_option(text: str, says: str) -> None:
    result = CliRunner().invoke(app, ["report", "--month", text])
    assert result.exit_code == 2
    assert "--month" in result.output and says in result.output and text in result.output


# --- fonts -----------------------------------------------------------------------------------

def test_a_font_without_chinese_glyphs_is_refused_saying_how_to_fix_it() -> None:
    from matplotlib import font_manager

    latin = font_manager.findfont("DejaVu Sans")
    with pytest.raises(NoCjkFont, match=r"has no glyphs for .*fonts-wqy-microhei"):
        find_cjk_font({FONT_ENV: latin})
    with pytest.raises(NoCjkFont, match="not a font file"):
        find_cjk_font({FONT_ENV: "/nonexistent/font.ttf"})


def test_drawing_a_missing_glyph_is_an_error_not_a_box(tmp_path: Path) -> None:
    import matplotlib

    figure = Figure()
    figure.text(0.5, 0.5, "太原")
    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}), \
            pytest.raises(NoCjkFont, match=r"empty box.*fonts-wqy-microhei"), \
            no_missing_glyphs():
        figure.savefig(tmp_path / "tofu.png")


# --- a filled store --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JobCase:
    tenant: str
    site: str
    model: str
    accelerators: int
    placed_at: datetime
    ended_at: datetime
    state: str
    price: Decimal

    @property
    def cost(self) -> Decimal:
        hours = Decimal((self.ended_at - self.placed_at).total_seconds()) / 3600
        return (self.accelerators * hours * self.price).quantize(FEN, ROUND_HALF_UP)


def _utc(day: int, hour: int, minute: int = 0, month: int = 6) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


JOBS = (
    JobCase("晋能研究院", "taiyuan-hall-a", "NVIDIA H800", 4, _utc(10, 2), _utc(10, 6, 30),
            "succeeded", Decimal("12.50")),
    JobCase("晋能研究院", "datong-cloud", "NVIDIA L20", 2, _utc(20, 1), _utc(20, 4, 20),
            "failed", Decimal("4.80")),
    # Placed on May 31st at 23:00 and ended on June 1st at 00:30, Beijing time.
    JobCase("shanxi-meteo", "taiyuan-hall-b", "NVIDIA H20", 4, _utc(31, 15, month=5),
            _utc(31, 16, 30, month=5), "succeeded", Decimal("6.00")),
    # Placed on June 30th at 22:00 and ended on July 1st at 00:30, Beijing time.
    JobCase("shanxi-meteo", "taiyuan-hall-a", "Ascend910B3", 4, _utc(30, 14), _utc(30, 16, 30),
            "succeeded", Decimal("9.00")),
    JobCase("shanxi-meteo", "datong-cloud", "NVIDIA L20", 1, _utc(15, 0), _utc(15, 0, 10),
            "cancelled", Decimal("4.80")),
)
WAIT = timedelta(minutes=5)


def add_jobs(conn: psycopg.Connection, site_ids: dict[str, int]) -> None:
    """Jobs with one run each, their transitions and, for runs that ran, a usage record."""
    for number, case in enumerate(JOBS):
        job, run = f"job-{number}", f"run-{number}"
        submitted = case.placed_at - WAIT
        ran = case.state != "cancelled"
        conn.execute(
            "INSERT INTO jobs (id, tenant, project, spec, constraints, tasks,"
            " accelerators_per_task, state, tries, current_run_id, submitted_at,"
            " state_changed_at, ended_at) VALUES (%s, %s, 'p', '{}', '{}', 1, %s, %s, %s, %s,"
            " %s, %s, %s)",
            (job, case.tenant, case.accelerators, case.state, int(ran), run if ran else None,
             submitted, case.ended_at, case.ended_at))
        moves = [(None, "queued", submitted, None)]
        if ran:
            conn.execute(
                "INSERT INTO runs (id, job_id, attempt, site_id, model, accelerators,"
                " fencing_token, state, lease_expires_at, placed_at, leased_at, started_at,"
                " ended_at, tenant, submitted_at) VALUES (%s, %s, 1, %s, %s, %s,"
                " nextval('fencing_tokens'), %s, %s, %s, %s, %s, %s, %s, %s)",
                (run, job, site_ids[case.site], case.model, case.accelerators, case.state,
                 case.ended_at, case.placed_at, case.placed_at, case.placed_at, case.ended_at,
                 case.tenant, submitted))
            hours = case.accelerators * Decimal(
                (case.ended_at - case.placed_at).total_seconds()) / 3600
            conn.execute(
                "INSERT INTO usage_records (run_id, job_id, tenant, project, site_id, model,"
                " accelerators, started_at, ended_at, accelerator_hours, fp16_pflop_hours,"
                " energy_method, yuan_per_accelerator_hour, cost_yuan)"
                " VALUES (%s, %s, %s, 'p', %s, %s, %s, %s, %s, %s, %s, 'none', %s, %s)",
                (run, job, case.tenant, site_ids[case.site], case.model, case.accelerators,
                 case.placed_at, case.ended_at, hours, hours / 4, case.price, case.cost))
            moves += [("queued", "placed", case.placed_at, run),
                      ("placed", case.state, case.ended_at, run)]
        else:
            moves.append(("queued", "cancelled", case.ended_at, None))
        for from_state, to_state, at, run_id in moves:
            conn.execute("INSERT INTO job_transitions (job_id, run_id, from_state, to_state, at)"
                         " VALUES (%s, %s, %s, %s, %s)", (job, run_id, from_state, to_state, at))


@pytest.fixture(scope="module")
def store(pg_admin_url: str, template_db: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    def jobs(conn: psycopg.Connection, _db: object, fleet: simulated_fleet.SimulatedFleet) -> None:
        add_jobs(conn, {name: site.id for name, site in fleet.sites.items()})

    with simulated_fleet.simulated_store(
            pg_admin_url, template_db, tmp_path_factory.mktemp("report"), start=FILL_START,
            end=FILL_END, step=timedelta(minutes=10), then=jobs) as (url, fleet):
        yield url, {name: site.id for name, site in fleet.sites.items()}


def run_cli(url: str, out: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["report", "--month", "2025-06", "--out", str(out), *args],
                                env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class ReadBack:
    pdf: Path
    pages: list[str]  # the text of each page
    images: list[np.ndarray]  # each page rendered

    @property
    def text(self) -> str:
        return "\n".join(self.pages)

    @property
    def flat(self) -> str:
        """The text with line breaks as spaces, for sentences that wrap."""
        return " ".join(self.text.split())


def read_back(pdf: Path, render_to: Path | None = None) -> ReadBack:
    document = pdfium.PdfDocument(pdf)
    pages, images = [], []
    for number, page in enumerate(document, start=1):
        pages.append(page.get_textpage().get_text_range())
        image = page.render(scale=1.0).to_pil().convert("RGB")
        if render_to is not None:
            image.save(render_to / f"page-{number}.png")
        images.append(np.asarray(image))
    document.close()
    return ReadBack(pdf, pages, images)


def _pue(conn: psycopg.Connection, sites: list[int] | None = None) -> Decimal:
    """Σ facility ÷ Σ IT over June's hours (Beijing time) in which both were measured."""
    facility, it = conn.execute(
        "SELECT sum(facility_kwh), sum(it_kwh) FROM rollup_site_hourly"
        " WHERE hour >= %s AND hour < %s AND it_kwh IS NOT NULL AND facility_kwh IS NOT NULL"
        " AND (%s::bigint[] IS NULL OR site_id = ANY(%s))",
        (JUNE.start, JUNE.end, sites, sites)).fetchone()
    return facility / it


def _in_june(moment: datetime) -> bool:
    return JUNE.start <= moment < JUNE.end


@pytest.fixture(scope="module")
def june(store: tuple[str, dict[str, int]],
         tmp_path_factory: pytest.TempPathFactory) -> tuple[ReadBack, Path, str]:
    _cjk_font_or_skip()
    url, _ = store
    out = tmp_path_factory.mktemp("june")
    output = run_cli(url, out)
    return read_back(out / "jinsuan-report-2025-06.pdf", out), out, output


def test_the_report_has_its_sections_on_numbered_pages(june: tuple[ReadBack, Path, str]) -> None:
    report, _, output = june
    total = len(report.pages)
    assert f"({total} pages" in output
    for number, text in enumerate(report.pages, start=1):
        assert f"page {number} of {total}" in text
    starts = [next(i for i, text in enumerate(report.pages) if heading in text.splitlines())
              for heading in ("Capacity", "Energy and PUE", "Jobs",
                              "How these figures are measured")]
    assert starts == sorted(starts) and starts[0] == 1, "sections in order after the title page"
    title = " ".join(report.pages[0].split())
    assert "Monthly report, June 2025" in title
    assert "2025-06-01 00:00 to 2025-07-01 00:00 Beijing" in title
    assert "2025-05-31 16:00 to 2025-06-30 16:00 UTC" in title


def test_monthly_pue_is_the_ratio_of_energy_sums(
        june: tuple[ReadBack, Path, str], store: tuple[str, dict[str, int]]) -> None:
    report, _, _ = june
    url, site_ids = store
    with psycopg.connect(url) as conn:
        pue = _pue(conn)
        # The month's edge matters: the hours of July 1st (Beijing) would change the figure.
        with_july = conn.execute(
            "SELECT sum(facility_kwh) / sum(it_kwh) FROM rollup_site_hourly"
            " WHERE hour >= %s AND it_kwh IS NOT NULL AND facility_kwh IS NOT NULL",
            (JUNE.start,)).fetchone()[0]
        per_centre = {
            centre: _pue(conn, [site_ids[s.name] for s in simulated_fleet.SMALL_FLEET
                                if s.data_centre == centre])
            for centre in {s.data_centre for s in simulated_fleet.SMALL_FLEET}}
    assert f"{pue:.3f}" != f"{with_july:.3f}"
    assert f"PUE of the month over the selection: {pue:.3f}" in report.flat
    for centre, value in per_centre.items():
        (row,) = [line for line in report.text.splitlines()
                  if line.startswith(centre) and re.search(r"of 720$", line)]
        assert f" {value:.3f} " in row, row


def test_capacity_and_chinese_names_are_in_the_text_layer(
        june: tuple[ReadBack, Path, str], store: tuple[str, dict[str, int]]) -> None:
    report, _, _ = june
    url, _ = store
    for name in ("太原", "大同", "晋能智算", "云冈数据", "太原一号数据中心", "晋能研究院"):
        assert name in report.text
    with psycopg.connect(url) as conn:
        pflops, racks = conn.execute(
            "SELECT sum(fp16_pflops), sum(racks) FROM ("
            " SELECT DISTINCT ON (site_id) fp16_pflops, racks FROM rollup_site_hourly"
            " WHERE hour >= %s AND hour < %s ORDER BY site_id, hour DESC) latest",
            (JUNE.start, JUNE.end)).fetchone()
    assert f"sites had {pflops:,.2f} FP16 PFlops connected" in report.flat
    assert f"in {racks:,} racks" in report.flat


def test_the_cjk_font_is_embedded(june: tuple[ReadBack, Path, str]) -> None:
    report, _, _ = june
    font = find_cjk_font()
    embedded = set(re.findall(rb"/BaseFont /[A-Z]{6}\+([A-Za-z0-9-]+)", report.pdf.read_bytes()))
    assert font.family.replace(" ", "").encode() in embedded, embedded


def test_jobs_and_cost_are_june_s(june: tuple[ReadBack, Path, str]) -> None:
    report, _, _ = june
    ended = [case for case in JOBS if _in_june(case.ended_at)]
    costs: dict[str, Decimal] = {}
    for case in ended:
        if case.state != "cancelled":
            costs[case.tenant] = costs.get(case.tenant, Decimal(0)) + case.cost
    count = {state: sum(case.state == state for case in ended)
             for state in ("succeeded", "failed", "cancelled")}
    runs = [case for case in JOBS if case.state != "cancelled" and _in_june(case.placed_at)]
    assert (f"Jobs ended in the month: {sum(count.values())} ({count['succeeded']} succeeded, "
            f"{count['failed']} failed, {count['cancelled']} cancelled)") in report.flat
    assert f"Runs placed: {len(runs)}, on {len({c.site for c in runs})} sites" in report.flat
    assert "Wait from submission to first placement: 5 min at the median" in report.flat
    lines = report.text.splitlines()
    for tenant, cost in costs.items():
        (row,) = [line for line in lines if line.startswith(tenant)]
        assert row.endswith(f"¥{cost:,.2f}"), row
    (total,) = [line for line in lines if line.startswith("all tenants")]
    assert total.endswith(f"¥{sum(costs.values()):,.2f}")


def test_pages_and_charts_are_not_blank(june: tuple[ReadBack, Path, str]) -> None:
    report, out, output = june
    charts = sorted(out.glob("jinsuan-report-2025-06-*.png"))
    names = {path.name.removeprefix("jinsuan-report-2025-06-").removesuffix(".png")
             for path in charts}
    assert {"capacity-by-city", "capacity-by-enterprise", "accelerators-by-model",
            "pue-by-centre", "pue-daily", "energy-daily", "coverage-daily", "job-outcomes",
            "placements-by-site"} <= names
    for path in charts:
        assert str(path) in output
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert pixels.std() > 10, f"{path.name} looks blank"
        # Axes, ticks and text are grey or black; lines and bars of data are in colour.
        coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 60).sum()
        assert coloured > 300, f"{path.name} has {coloured} coloured pixels: no data drawn?"
    for number, image in enumerate(report.images, start=1):
        inked = (image.min(axis=2) < 200).mean()
        assert inked > 0.005, f"page {number} is nearly empty ({inked:.2%} inked)"


def test_a_city_filter_narrows_every_figure(
        store: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    _cjk_font_or_skip()
    url, site_ids = store
    run_cli(url, tmp_path, "--city", "太原")
    report = read_back(tmp_path / "jinsuan-report-2025-06.pdf")
    with psycopg.connect(url) as conn:
        pue = _pue(conn, [site_ids[s.name] for s in simulated_fleet.SMALL_FLEET
                          if s.city == "太原"])
    assert "Selection: city: 太原." in report.flat
    assert f"PUE of the month over the selection: {pue:.3f}" in report.flat
    assert "大同" not in report.text


def test_an_unknown_city_is_refused(store: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    _cjk_font_or_skip()
    url, _ = store
    result = CliRunner().invoke(app, ["report", "--month", "2025-06", "--out", str(tmp_path),
                                      "--city", "北京"], env={"DATABASE_URL": url})
    assert result.exit_code == 2
    assert "city 北京 is not known" in result.output and "太原" in result.output
    assert not list(tmp_path.iterdir())


def test_an_empty_month_says_so_in_words_read_as_grafana(
        store: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    _cjk_font_or_skip()
    url, _ = store
    with psycopg.connect(url, autocommit=True) as conn:
        # As Grafana's read-only role: the report needs no more than the dashboards may read.
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        conn.execute("SET ROLE jinsuan_grafana")
        written = write_report(conn, parse_month("2025-03"), tmp_path)
    assert written.charts == [] and not list(tmp_path.glob("*.png"))
    report = read_back(written.pdf)
    assert len(report.pages) == written.pages >= 5
    assert report.flat.count("March 2025: no figures: the store holds no rolled-up hours") >= 3
    assert "March 2025: no job ended, was placed or was charged in this month." in report.flat


def test_the_report_reads_the_measure_4_line_from_the_energy_dashboard() -> None:
    from dashboards.report.build import measure4_target

    assert measure4_target() == Decimal("1.18")
