"""Voucher statements as files: an applicant's and a provider's, as CSV, XLSX and PDF, fetched
through the API and the command line, parsed back and compared exactly with the statements
``rewards.vouchers.settling`` makes (balances from the ledger); who may fetch whose.

The story, on tests/test_vouchers.py's world (jobs run through the scheduler's own code, 4 H100
at 8.00 yuan an hour each, so a job costs 32.00 yuan an hour; the vouchers draw 20%):

- 清源智能 (tenant lab-a) holds voucher V1 on Taihang Compute (contract HT-1, 300,000.00 ×
  20% = 60,000.00) and V2 (contract HT-2, 10,000.00 × 20% = 2,000.00); 云冈大学 (lab-b) holds
  V3 on Fenhe Cloud (contract B-1, 2,000.00).
- Job 1 on V1 at ty-1 for 2.5 h: 80.00 yuan, draws 16.00. Job 2 on V1 at fh-1 (Fenhe's site,
  not the contracted provider's) draws nothing, and says why.
- The bureau settles Taihang's period (16.00) and pays it (BOC-2026-0042).
- Job 1's usage is corrected down by 30.00: V1 gets 6.00 back. Job 3 on V2 at ty-1 for 1 h:
  32.00 yuan, draws 6.40. Job 4 on V3 at fh-1 for 1 h draws 6.40 from 云冈大学's voucher.
- V2 is revoked: its 2,000.00 - 6.40 = 1,993.60 returns to the pool.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import psycopg
import pypdfium2 as pdfium
import pytest
from collectors_kit import bearer, make_app
from conftest import fresh_database
from fastapi.testclient import TestClient
from test_vouchers import RUN_AT, World
from typer.testing import CliRunner

from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.errors import Unavailable
from jinsuan.kernel.pdf.fonts import find_cjk_font
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database
from rewards.vouchers import drawing, issuing, settling
from scheduler.usage import record_adjustment

BOM = b"\xef\xbb\xbf"
REFERENCE = "BOC-2026-0042"
APPLICANT_HEADER = [
    "line", "voucher", "provider", "contract", "pool year", "rate", "state", "valid from",
    "valid until", "issued (yuan)", "drawn (yuan)", "balance (yuan)", "returned to pool (yuan)",
    "usage record", "run", "job", "usage cost (yuan)", "amount (yuan)", "reason",
    "at (Beijing time)", "ledger entry"]
PROVIDER_HEADER = [
    "line", "usage record", "run", "job", "voucher", "applicant", "usage cost (yuan)",
    "amount (yuan)", "reason", "drawn at (Beijing time)", "ledger entry", "settlement",
    "paid on"]
NOT_TAIHANG = "ran at 'fh-1', not at an in-province site of the contracted provider " \
              "'Taihang Compute'"


@dataclass
class Story:
    client: TestClient
    app: Any
    conn: psycopg.Connection
    world: World
    keys: dict[str, str]
    v1: int
    v2: int
    v3: int
    jobs: dict[str, str]
    day: date  # the Beijing date of the draws: their settlement period's
    settlement: int


@pytest.fixture(scope="module")
def story(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Story]:
    with fresh_database(pg_admin_url, template_db) as url:
        settings = Settings(database_url=url, data_dir=tmp_path_factory.mktemp("vouchers"),
                            run_background_jobs=False)
        database = Database.open(settings)
        try:
            with database.pool.connection() as conn:
                yield _story(conn, database, settings)
        finally:
            database.close()


def _story(conn: psycopg.Connection, database: Database, settings: Settings) -> Story:
    world = World(conn, database)
    fenhe = conn.execute("SELECT id FROM enterprises WHERE name = 'Fenhe Cloud'").fetchone()[0]
    keys = {"bureau": create_key(conn, Role.BUREAU), "admin": create_key(conn, Role.ADMIN),
            "lab-a": create_key(conn, Role.DISPATCHER, tenant="lab-a"),
            "lab-b": create_key(conn, Role.DISPATCHER, tenant="lab-b"),
            "taihang": create_key(conn, Role.OPERATOR, enterprise_id=world.taihang),
            "fenhe": create_key(conn, Role.OPERATOR, enterprise_id=fenhe)}
    v1 = world.voucher(world.lab_a, "300000.00", contract="HT-1").voucher_id
    v2 = world.voucher(world.lab_a, "10000.00", contract="HT-2").voucher_id
    v3 = world.voucher(world.lab_b, "10000.00", provider="Fenhe Cloud", contract="B-1"
                       ).voucher_id
    jobs = {"1": world.run("lab-a", "ty-1", v1, hours=2.5),
            "2": world.run("lab-a", "fh-1", v1, hours=1)}
    assert drawing.draw_pending(conn) == 2
    drawn_at = conn.execute("SELECT min(drawn_at) FROM voucher_draws").fetchone()[0]
    day = drawn_at.astimezone(SHANGHAI).date()
    settlement = settling.settle(conn, world.maker, world.taihang, day)
    settling.mark_paid(conn, world.checker, settlement, REFERENCE)
    original = conn.execute("SELECT id FROM usage_records WHERE job_id = %s", (jobs["1"],)
                            ).fetchone()[0]
    record_adjustment(conn, original, reason="price corrected", cost_yuan=Decimal("-30.00"))
    later = RUN_AT + timedelta(days=1)
    jobs["3"] = world.run("lab-a", "ty-1", v2, hours=1, at=later)
    jobs["4"] = world.run("lab-b", "fh-1", v3, hours=1, at=later)
    assert drawing.draw_pending(conn) == 3
    issuing.revoke(conn, world.maker, v2, "contract cancelled")
    app, _ = make_app(settings, database)
    client = TestClient(app)
    return Story(client, app, conn, world, keys, v1, v2, v3, jobs, day, settlement)


def _get(story: Story, path: str, key: str, **params: Any) -> Any:
    return story.client.get(f"/v1/vouchers/statements/{path}", params=params,
                            headers=bearer(story.keys[key]))


def _csv(content: bytes, header: list[str]) -> list[dict[str, str]]:
    assert content.startswith(BOM)  # Excel reads UTF-8 only with it
    got, *rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    assert got == header
    return [dict(zip(header, row, strict=True)) for row in rows]


def _xlsx(content: bytes, header: list[str]) -> list[dict[str, Any]]:
    """The "Statement" sheet's rows; every amount cell an exact number cell."""
    sheet = openpyxl.load_workbook(io.BytesIO(content))["Statement"]
    got, *rows = list(sheet.iter_rows())
    assert [c.value for c in got] == header
    for row in rows:
        for column, cell in zip(header, row, strict=True):
            if column.endswith("(yuan)") and cell.value is not None:
                assert cell.data_type == "n" and cell.number_format == "#,##0.00"
    return [{c: cell.value for c, cell in zip(header, row, strict=True)} for row in rows]


def _amount(text: Any) -> Decimal | None:
    """An amount as a file holds it: CSV text, or an XLSX number read back through ``str``."""
    return None if text in ("", None) else Decimal(str(text))


def _sheet_xml(content: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return archive.read("xl/worksheets/sheet1.xml").decode()


# --- an applicant's statement ------------------------------------------------------------------

def _check_applicant(story: Story, rows: list[dict[str, Any]]) -> None:
    """The rows of 清源智能's statement against settling's statements and by hand."""
    assert (rows[0]["provider"], rows[0]["contract"]) == ("Taihang Compute", "HT-1")
    expected = [settling.voucher_statement(story.conn, v) for v in (story.v1, story.v2)]
    at = 0
    for v in expected:
        head = rows[at]
        assert (head["line"], int(head["voucher"]), str(head["state"])) == (
            "voucher", v["id"], v["state"])
        assert (_amount(head["issued (yuan)"]), _amount(head["drawn (yuan)"]),
                _amount(head["balance (yuan)"])) == (v["face_value"], v["drawn"], v["balance"])
        assert _amount(head["returned to pool (yuan)"]) == (
            v["face_value"] - v["drawn"] - v["balance"])
        for draw, row in zip(v["draws"], rows[at + 1:at + 1 + len(v["draws"])], strict=True):
            assert int(row["voucher"]) == v["id"]
            assert (int(row["usage record"]), row["run"], row["job"]) == (
                draw["usage_record"], draw["run"], draw["job"])
            assert (_amount(row["usage cost (yuan)"]), _amount(row["amount (yuan)"]),
                    row["reason"]) == (draw["usage_cost"], draw["amount"], draw["reason"])
            assert int(row["ledger entry"] or 0) == (draw["ledger_entry"] or 0)
        at += 1 + len(v["draws"])
    v1, v2 = rows[0], rows[4]
    # V1: 60,000.00 issued; 16.00 drawn, nothing for job 2, 6.00 given back: 10.00 drawn,
    # 59,990.00 left, nothing returned.
    assert [(r["line"], r["job"], _amount(r["amount (yuan)"])) for r in rows[1:4]] == [
        ("draw", story.jobs["1"], Decimal("16.00")),
        ("nothing drawn", story.jobs["2"], Decimal("0.00")),
        ("given back", story.jobs["1"], Decimal("-6.00"))]
    assert rows[1]["reason"] == "80.00 × 0.20 = 16.00" and rows[2]["reason"] == NOT_TAIHANG
    assert rows[3]["reason"] == "gave back 6.00 for an adjustment of -30.00"
    assert [_amount(v1[c]) for c in APPLICANT_HEADER[9:13]] == [
        Decimal("60000.00"), Decimal("10.00"), Decimal("59990.00"), Decimal("0.00")]
    # V2, revoked: 2,000.00 issued, 6.40 drawn (32.00 × 0.20), 1,993.60 back to the pool.
    assert (v2["state"], v2["reason"]) == ("revoked", "contract cancelled")
    assert [_amount(v2[c]) for c in APPLICANT_HEADER[9:13]] == [
        Decimal("2000.00"), Decimal("6.40"), Decimal("0.00"), Decimal("1993.60")]
    assert (rows[5]["job"], _amount(rows[5]["amount (yuan)"])) == (story.jobs["3"],
                                                                    Decimal("6.40"))
    # Totals: 62,000.00 issued = 16.40 drawn + 59,990.00 left + 1,993.60 returned.
    total = rows[6]
    assert total["line"] == "total" and len(rows) == 7
    assert [_amount(total[c]) for c in APPLICANT_HEADER[9:13]] == [
        Decimal("62000.00"), Decimal("16.40"), Decimal("59990.00"), Decimal("1993.60")]


def test_an_applicants_statement_as_csv_holds_every_voucher_and_record_exactly(
        story: Story) -> None:
    applicant = story.world.a.id
    reply = _get(story, "applicant.csv", "lab-a", applicant=applicant)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/csv; charset=utf-8"
    assert reply.headers["content-disposition"] == (
        f'attachment; filename="jinsuan-voucher-statement-applicant-{applicant}.csv"')
    rows = _csv(reply.content, APPLICANT_HEADER)
    _check_applicant(story, rows)
    # Beijing wall time, to the second: job 1's draw was decided after its run ended.
    drawn = datetime.strptime(rows[1]["at (Beijing time)"], "%Y-%m-%d %H:%M:%S")
    assert drawn.replace(tzinfo=SHANGHAI) > RUN_AT
    # The bureau gets the same file.
    assert _get(story, "applicant.csv", "bureau", applicant=applicant).content == reply.content


def test_an_applicants_statement_as_xlsx_keeps_amounts_exact(story: Story) -> None:
    reply = _get(story, "applicant.xlsx", "admin", applicant=story.world.a.id)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    _check_applicant(story, _xlsx(reply.content, APPLICANT_HEADER))
    xml = _sheet_xml(reply.content)  # each amount's own text, never a float's
    for text in ("60000.00", "59990.00", "-6.00", "1993.60", "62000.00", "16.40"):
        assert f"<v>{text}</v>" in xml
    summary = dict(openpyxl.load_workbook(io.BytesIO(reply.content))["Summary"].iter_rows(
        min_row=2, values_only=True))
    assert summary["party"] == "清源智能" and summary["covers"] == "pool year 2026"
    assert summary["kind"] == "company, in Shanxi"
    assert _amount(summary["balance"]) == Decimal("59990.00")


# --- a provider's statement ---------------------------------------------------------------------

def _check_provider(story: Story, rows: list[dict[str, Any]]) -> None:
    found = settling.provider_statement(story.conn, story.world.taihang, story.day)
    draws, totals = rows[:-4], rows[-4:]
    assert len(draws) == len(found["draws"]) == 3
    for row, draw in zip(draws, found["draws"], strict=True):
        assert (int(row["usage record"]), row["run"], row["job"], int(row["voucher"])) == (
            draw["usage_record"], draw["run"], draw["job"], draw["voucher"])
        assert (_amount(row["usage cost (yuan)"]), _amount(row["amount (yuan)"])) == (
            draw["usage_cost"], draw["amount"])
        assert row["reason"] == draw["reason"] and row["applicant"] == "清源智能"
        assert int(row["ledger entry"]) == draw["ledger_entry"]
        assert int(row["settlement"] or 0) == (draw["settlement"] or 0)
    # Job 1's 16.00 settled and paid today; its 6.00 given back and job 3's 6.40 not settled.
    # 云冈大学's draw is on Fenhe's voucher and job 2 drew nothing: neither is here.
    assert [(r["line"], r["job"], _amount(r["amount (yuan)"]), str(r["paid on"] or "")[:10])
            for r in draws] == [
        ("draw", story.jobs["1"], Decimal("16.00"), str(story.day)),
        ("given back", story.jobs["1"], Decimal("-6.00"), ""),
        ("draw", story.jobs["3"], Decimal("6.40"), "")]
    assert int(draws[0]["settlement"]) == story.settlement and draws[1]["settlement"] in ("",
                                                                                         None)
    # 16.00 - 6.00 + 6.40 = 16.40 drawn; 16.00 settled; 0.40 not; receivable 0.40 (the paid
    # 16.00 left it).
    assert [(r["line"], _amount(r["amount (yuan)"])) for r in totals] == [
        ("drawn in the period", Decimal("16.40")), ("settled", Decimal("16.00")),
        ("not yet settled", Decimal("0.40")), ("receivable now, all periods", Decimal("0.40"))]
    assert (found["total"], found["unsettled"], found["receivable_balance"]) == (
        Decimal("16.40"), Decimal("0.40"), Decimal("0.40"))


def test_a_providers_statement_as_csv_and_xlsx(story: Story) -> None:
    params = {"enterprise": "Taihang Compute", "day": story.day}
    reply = _get(story, "provider.csv", "taihang", **params)
    assert reply.status_code == 200, reply.text
    first = story.day.replace(month=(story.day.month - 1) // 3 * 3 + 1, day=1)  # the quarter
    assert reply.headers["content-disposition"] == (
        'attachment; filename="jinsuan-voucher-statement-provider-'
        f'{story.world.taihang}-{first}.csv"')
    _check_provider(story, _csv(reply.content, PROVIDER_HEADER))
    book = _get(story, "provider.xlsx", "bureau", **params)
    assert book.status_code == 200, book.text
    _check_provider(story, _xlsx(book.content, PROVIDER_HEADER))
    assert "<v>-6.00</v>" in _sheet_xml(book.content)
    summary = dict(openpyxl.load_workbook(io.BytesIO(book.content))["Summary"].iter_rows(
        min_row=2, values_only=True))
    assert summary["party"] == "Taihang Compute"
    assert summary["settlements"] == (f"settlement {story.settlement}: 16.00 yuan, paid on"
                                      f" {story.day} (reference {REFERENCE})")


def test_the_writers_keep_text_from_becoming_formulas(story: Story) -> None:
    """A reason Excel would run as a formula stays text in both files."""
    from rewards.vouchers import exports

    made = exports.applicant_statement(story.conn, story.world.a.id)
    line = list(made.lines[2])
    line[APPLICANT_HEADER.index("reason")] = "=HYPERLINK(\"x\")"
    odd = replace(made, lines=(tuple(line),))
    [row] = _csv(exports.statement_csv(odd), APPLICANT_HEADER)
    assert row["reason"] == "'=HYPERLINK(\"x\")"
    content = exports.statement_xlsx(odd)
    assert "<f>" not in _sheet_xml(content)
    assert openpyxl.load_workbook(io.BytesIO(content))["Statement"]["S2"].value == (
        "=HYPERLINK(\"x\")")


# --- the PDF ------------------------------------------------------------------------------------

def _pdf_text(content: bytes) -> str:
    """Every page rendered (a drawing error would raise) and its text, whitespace folded."""
    document = pdfium.PdfDocument(content)
    pages = []
    for page in document:
        image = page.render(scale=0.5).to_pil()
        assert image.getextrema() != ((255, 255),) * len(image.getbands())  # not blank
        pages.append(" ".join(page.get_textpage().get_text_range().split()))
    document.close()
    return " ".join(pages)


def _font_or_skip() -> None:
    try:
        find_cjk_font()
    except Unavailable as exc:
        pytest.skip(f"no CJK font on this machine ({exc.reason})")


def test_the_pdfs_name_the_party_period_amounts_and_jobs(story: Story) -> None:
    _font_or_skip()
    reply = _get(story, "applicant.pdf", "lab-a", applicant=story.world.a.id)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/pdf"
    text = _pdf_text(reply.content)
    assert "Voucher statement: 清源智能" in text and "pool year 2026" in text
    assert f"credit code {story.world.a.credit_code}" in text
    # V1's 60,000.00 and 59,990.00 left, V2's 1,993.60 returned, the totals 62,000.00, 16.40.
    for amount in ("60,000.00", "59,990.00", "1,993.60", "62,000.00", "16.40", "-6.00"):
        assert amount in text
    assert story.jobs["1"] in text and story.jobs["3"] in text
    assert "not at an in-province site" in text  # job 2's reason
    assert "云冈大学" not in text and story.jobs["4"] not in text

    reply = _get(story, "provider.pdf", "taihang", enterprise="Taihang Compute", day=story.day)
    assert reply.status_code == 200, reply.text
    text = _pdf_text(reply.content)
    first = story.day.replace(month=(story.day.month - 1) // 3 * 3 + 1, day=1)
    assert "Voucher statement: Taihang Compute" in text
    assert f"settlement period {first} to" in text
    for amount in ("16.00", "-6.00", "6.40", "0.40"):
        assert amount in text
    assert story.jobs["1"] in text and story.jobs["3"] in text and "清源智能" in text
    assert f"reference {REFERENCE}" in text and story.jobs["2"] not in text


# --- who may fetch whose -----------------------------------------------------------------------

def test_another_party_gets_nothing(story: Story) -> None:
    mine, theirs = story.world.a.id, story.world.b.id
    for kind in ("csv", "xlsx", "pdf"):
        refused = _get(story, f"applicant.{kind}", "lab-b", applicant=mine)
        assert refused.status_code == 404, kind
        error = refused.json()["error"]
        assert (error["reason"], error["field"]) == (f"no applicant {mine}", "applicant")
    assert _get(story, "applicant.csv", "lab-a", applicant=theirs).status_code == 404
    assert _get(story, "applicant.csv", "lab-b", applicant=theirs).status_code == 200
    assert _get(story, "applicant.csv", "bureau", applicant=999_999).status_code == 404
    assert _get(story, "applicant.csv", "taihang", applicant=mine).status_code == 403
    params = {"enterprise": "Taihang Compute", "day": story.day}
    assert _get(story, "provider.csv", "fenhe", **params).status_code == 404
    assert _get(story, "provider.csv", "lab-a", **params).status_code == 403
    assert _get(story, "provider.doc", "bureau", **params).status_code == 422
    assert story.client.get("/v1/vouchers/statements/applicant.csv",
                            params={"applicant": mine}).status_code == 401


# --- the command line ---------------------------------------------------------------------------

def test_the_cli_writes_statements_to_files(story: Story, tmp_path: Path) -> None:
    from servers import serving

    from jinsuan.cli import app as cli

    runner = CliRunner()
    with serving(story.app) as url:
        def run(key: str, *args: str) -> Any:
            return runner.invoke(cli, ["voucher", "statement", "--url", url, "--key",
                                       story.keys[key], *args])

        out = tmp_path / "清源.csv"
        done = run("lab-a", "--applicant", str(story.world.a.id), "--format", "csv",
                   "--out", str(out))
        assert done.exit_code == 0, done.output
        assert "wrote" in done.output
        assert out.read_bytes() == _get(story, "applicant.csv", "lab-a",
                                        applicant=story.world.a.id).content
        book = tmp_path / "taihang.xlsx"
        done = run("taihang", "--provider", "Taihang Compute", "--day", str(story.day),
                   "--format", "xlsx", "--out", str(book))
        assert done.exit_code == 0, done.output
        _check_provider(story, _xlsx(book.read_bytes(), PROVIDER_HEADER))
        refused = run("lab-b", "--applicant", str(story.world.a.id), "--format", "pdf",
                      "--out", str(tmp_path / "x.pdf"))
        assert refused.exit_code == 2
        assert f"404: no applicant {story.world.a.id} (applicant)" in refused.output
        assert not (tmp_path / "x.pdf").exists()
        both = run("bureau", "--applicant", "1", "--provider", "Taihang Compute")
        assert both.exit_code == 2 and "one of --provider and --applicant" in both.output
        alone = run("bureau", "--applicant", "1", "--format", "csv")
        assert alone.exit_code == 2 and "--format and --out go together" in alone.output
        table = run("taihang", "--provider", "Taihang Compute", "--day", str(story.day))
        assert table.exit_code == 0, table.output
        assert "16.40 drawn, 0.40 not yet settled" in table.output
