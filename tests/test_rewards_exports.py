"""The year's awards exported for the bureau: CSV, XLSX and the PDF summary, read back.

The store is filled by hand for 2025 (a whole Asia/Shanghai year of 8,760 hours): rollup rows
for two enterprises, a commissioning declaration accepted by the bureau, and an assessment of
both measures under the shipped policy with one change, made in a copy: 5b's rate and cap are
the policy's own rather than assumptions, so that 5b's awards rest on no assumption while
measure 4's do. One award is then paid, one proposed. Every export is fetched through the API
and parsed back; the amounts are worked by hand below.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import openpyxl
import psycopg
import pypdfium2 as pdfium
import pytest
from collectors_kit import bearer, make_app
from fastapi.testclient import TestClient
from servers import serving
from typer.testing import CliRunner

from jinsuan.cli.rewards import rewards_app
from jinsuan.contract.policytime import year_bounds
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.errors import Unavailable
from jinsuan.kernel.pdf.fonts import FONT_ENV, find_cjk_font
from jinsuan.kernel.sites import create_site
from rewards import exports
from rewards.policy import POLICIES, in_force
from rewards.store import assess

YEAR = 2025
ALPHA, BETA = "晋能智算", "Beta Compute"
ALPHA_CENTRE, BETA_CENTRE = "晋能太原一号", "大同云谷"
REFERENCE = "ICBC-2025-0042"
POLICY = in_force(YEAR)

# By hand, 2025 has 8,760 hours, all inside the policy's window (2024-07-01 .. 2026-12-31).
# 5b at 20,000.00 yuan per PFlops-year, capped at 500,000.00:
#   晋能智算: 2.5 PFlops every hour: 2.5 × 8760 / 8760 = 2.5 PFlops-years × 20,000 = 50,000.00
#   Beta:     1.5 PFlops in the first 1,000 hours: 1500 / 8760 × 20,000 = 3,424.6575... -> 3,424.66
# Measure 4 at 1,000.00 yuan per rack:
#   晋能太原一号: commissioned 2024-09-01 (accepted), PUE 115 × 8760 / (100 × 8760) = 1.15 < 1.18,
#     every hour fully metered (share 1.0000 ≥ 0.90), 12 racks: 12 × 1,000 = 12,000.00
#   大同云谷: no declaration, 1,000 of 8,760 hours metered (0.1142), PUE 1.30: nothing, 0.00
EXPECTED = {  # (measure, enterprise): (data centre, amount, eligible, state, payment reference)
    ("4", BETA): (BETA_CENTRE, Decimal("0.00"), False, "assessed", None),
    ("4", ALPHA): (ALPHA_CENTRE, Decimal("12000.00"), True, "proposed", None),
    ("5b", BETA): (None, Decimal("3424.66"), True, "assessed", None),
    ("5b", ALPHA): (None, Decimal("50000.00"), True, "paid", REFERENCE),
}
MEASURE_4_ASSUMPTIONS = ["4.full_coverage_hour", "4.min_metered_share", "4.new_since",
                         "4.per_rack"]
HEADER = ["award id", "assessment id", "measure", "year", "enterprise", "data centre",
          "amount (yuan)", "eligible", "state", "payment reference", "reasons", "assumptions",
          "rests on assumptions"]


@dataclass
class Year:
    client: TestClient
    app: object
    conn: psycopg.Connection
    bureau: str
    beta_operator: str
    awards: list[dict]  # as the awards route returns them to the bureau


def _policies_without_5b_assumptions(folder: Path) -> Path:
    """The shipped policy in force for 2025, with 5b's rate and cap no longer assumptions."""
    section, lines = "", []
    for line in (POLICIES / POLICY.file).read_text(encoding="utf-8").splitlines():
        section = line if line.startswith("[") else section
        if section in ("[measures.5b.rate]", "[measures.5b.cap]") and line == "assumption = true":
            continue
        lines.append(line)
    folder.mkdir()
    (folder / POLICY.file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _hours(conn: psycopg.Connection, site_id: int, hours: int, pflops: float, facility: int,
           racks: int) -> None:
    """``hours`` rollup rows from the start of 2025 (Beijing), 100 kWh IT each, fully covered."""
    start, _ = year_bounds(YEAR)
    conn.execute(
        "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue, fp16_pflops,"
        " accelerators, racks, coverage_it, coverage_facility, coverage_accelerators)"
        " SELECT %s, %s + make_interval(hours => n), 100, %s, %s / 100.0, %s, 4, %s, 1, 1, 1"
        " FROM generate_series(0, %s - 1) n",
        (site_id, start, facility, facility, pflops, racks, hours))


@pytest.fixture
def year(settings, db, conn, tmp_path) -> Iterator[Year]:
    app, _ = make_app(settings, db)
    alpha = create_site(conn, enterprise=ALPHA, name="jnzs-ty", city="太原",
                        data_centre=ALPHA_CENTRE)
    beta = create_site(conn, enterprise=BETA, name="beta-dt", city="大同", data_centre=BETA_CENTRE)
    _hours(conn, alpha.id, 8760, 2.5, 115, 12)
    _hours(conn, beta.id, 1000, 1.5, 130, 3)
    alpha_operator = create_key(conn, Role.OPERATOR, enterprise_id=alpha.enterprise_id)
    beta_operator = create_key(conn, Role.OPERATOR, enterprise_id=beta.enterprise_id)
    maker, checker = (create_key(conn, Role.BUREAU, label=f"finance {n}") for n in (1, 2))
    with TestClient(app) as client:
        declared = client.post("/v1/rewards/declarations", headers=bearer(alpha_operator), json={
            "kind": "commissioning", "data_centre": ALPHA_CENTRE, "value": {"date": "2024-09-01"},
            "evidence": [{"name": "竣工验收报告.pdf", "sha256": "ab" * 32}]})
        assert declared.status_code == 201, declared.text
        reviewed = client.post(f"/v1/rewards/declarations/{declared.json()['id']}/review",
                               headers=bearer(maker),
                               json={"accept": True, "reason": "acceptance report checked"})
        assert reviewed.status_code == 200, reviewed.text
        assess(conn, YEAR, ["5b", "4"], by_key=None,
               policies=_policies_without_5b_assumptions(tmp_path / "policies"))
        listed = client.get("/v1/rewards/awards", params={"year": YEAR}, headers=bearer(maker))
        ids = {(a["measure"], a["enterprise"]): a["id"] for a in listed.json()}
        for step, key, body in (("propose", maker, None), ("approve", checker, None),
                                ("pay", maker, {"reference": REFERENCE})):
            moved = client.post(f"/v1/rewards/awards/{ids['5b', ALPHA]}/{step}", json=body,
                                headers=bearer(key))
            assert moved.status_code == 200, moved.text
        moved = client.post(f"/v1/rewards/awards/{ids['4', ALPHA]}/propose", headers=bearer(maker))
        assert moved.status_code == 200, moved.text
        awards = client.get("/v1/rewards/awards", params={"year": YEAR},
                            headers=bearer(maker)).json()
        yield Year(client, app, conn, maker, beta_operator, awards)


def _csv(content: bytes) -> list[dict[str, str]]:
    assert content.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    reader = csv.reader(io.StringIO(content.decode("utf-8-sig"), newline=""))
    header, *rows = list(reader)
    assert header == HEADER
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_the_csv_holds_every_award_exactly(year: Year) -> None:
    reply = year.client.get("/v1/rewards/awards.csv", params={"year": YEAR},
                            headers=bearer(year.bureau))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/csv; charset=utf-8"
    assert reply.headers["content-disposition"] == (
        'attachment; filename="jinsuan-rewards-2025-awards.csv"')
    rows = _csv(reply.content)
    assert [(r["measure"], r["enterprise"]) for r in rows] == list(EXPECTED)  # route's order
    for row, award in zip(rows, year.awards, strict=True):
        centre, amount, eligible, state, reference = EXPECTED[row["measure"], row["enterprise"]]
        assert Decimal(row["amount (yuan)"]) == Decimal(str(award["amount"])) == amount
        assert len(row["amount (yuan)"].split(".")[1]) == 2  # to the fen, as written
        assert (row["award id"], row["assessment id"]) == (str(award["id"]),
                                                           str(award["assessment"]))
        assert (row["year"], row["data centre"], row["eligible"], row["state"],
                row["payment reference"]) == (str(YEAR), centre or "", "yes" if eligible else "no",
                                              state, reference or "")
        assert row["reasons"] == "; ".join(award["reasons"])
        if row["measure"] == "4":  # every parameter of 4 the bureau chose is listed
            assert row["assumptions"] == ", ".join(MEASURE_4_ASSUMPTIONS)
            assert row["rests on assumptions"] == "yes"
        else:  # the policy copy made 5b's rate and cap the policy's own
            assert (row["assumptions"], row["rests on assumptions"]) == ("", "no")
    assert rows[0]["reasons"].startswith("not eligible: no accepted commissioning")


def test_an_operator_exports_its_own_enterprise_only(year: Year) -> None:
    rows = _csv(year.client.get("/v1/rewards/awards.csv", params={"year": YEAR},
                                headers=bearer(year.beta_operator)).content)
    assert [(r["measure"], r["enterprise"], Decimal(r["amount (yuan)"])) for r in rows] == [
        ("4", BETA, Decimal("0.00")), ("5b", BETA, Decimal("3424.66"))]
    book = openpyxl.load_workbook(io.BytesIO(year.client.get(
        "/v1/rewards/awards.xlsx", params={"year": YEAR},
        headers=bearer(year.beta_operator)).content))
    assert {r[4] for r in book["Awards"].iter_rows(min_row=2, values_only=True)} == {BETA}
    assert {r[2] for r in book["Figures"].iter_rows(min_row=2, values_only=True)} == {BETA}


def test_the_xlsx_holds_the_awards_assessments_parameters_and_figures(year: Year) -> None:
    reply = year.client.get("/v1/rewards/awards.xlsx", params={"year": YEAR},
                            headers=bearer(year.bureau))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == exports.XLSX_TYPE
    assert reply.headers["content-disposition"] == (
        'attachment; filename="jinsuan-rewards-2025-awards.xlsx"')
    book = openpyxl.load_workbook(io.BytesIO(reply.content))
    assert book.sheetnames == ["Awards", "Assessments", "Parameters", "Figures"]

    sheet = book["Awards"]
    header, *rows = list(sheet.iter_rows(values_only=True))
    assert list(header) == HEADER
    amount_at = HEADER.index("amount (yuan)")
    for number, (row, award) in enumerate(zip(rows, year.awards, strict=True), start=2):
        cell = sheet.cell(number, amount_at + 1)
        assert cell.data_type == "n" and cell.number_format == "#,##0.00"
        centre, amount, eligible, state, reference = EXPECTED[row[2], row[4]]
        assert Decimal(str(row[amount_at])) == Decimal(str(award["amount"])) == amount
        assert row[:2] == (award["id"], award["assessment"])
        assert (row[5] or None, row[7], row[8], row[9] or None) == (
            centre, "yes" if eligible else "no", state, reference)
        assert row[12] == ("yes" if row[2] == "4" else "no")
    # The number cells hold each Decimal's own text, not a float's rendering of it.
    with zipfile.ZipFile(io.BytesIO(reply.content)) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml").decode()
    for text in ("0.00", "12000.00", "3424.66", "50000.00"):
        assert f"<v>{text}</v>" in xml

    heads = {r[2]: r for r in book["Assessments"].iter_rows(min_row=2, values_only=True)}
    assert set(heads) == {"4", "5b"}
    stored = dict(year.conn.execute(
        "SELECT measure, inputs_sha256 FROM reward_assessments WHERE year = %s", (YEAR,)))
    for measure, head in heads.items():
        assert head[0] == next(a["assessment"] for a in year.awards if a["measure"] == measure)
        assert head[1:5] == (YEAR, measure, POLICY.id, POLICY.version)
        assert len(head[5]) == 64 and head[7] == stored[measure]
        assert isinstance(head[8], datetime)

    parameters = {r[3]: r for r in book["Parameters"].iter_rows(min_row=2, values_only=True)}
    assert parameters["4.per_rack"][4:8] == ("1000.00", "yuan per rack", None, "yes")
    assert parameters["4.per_rack"][8] == POLICY.measures["4"].parameters["per_rack"].note
    assert parameters["4.pue_below"][7] == "no"
    assert parameters["5b.rate"][4] == "20000.00" and parameters["5b.rate"][7] == "no"
    assert "9.rate" not in parameters  # measure 9 is not assessed from measurements

    figures = [r for r in book["Figures"].iter_rows(min_row=2, values_only=True)
               if r[0] == year.awards[1]["id"]]  # 晋能太原一号, measure 4
    by_name = {r[4]: r for r in figures}
    assert by_name["annual PUE"][5:7] == ("1.1500", "measured")
    assert by_name["racks"][5] == "12"
    assert by_name["commissioned on"][5:7] == ("2024-09-01", "declared")


def test_the_writers_keep_amounts_exact_and_text_from_becoming_formulas(year: Year) -> None:
    """An amount a float would render wrongly ("%.16g" of 999999999999.94 is
    999999999999.9399), and a payment reference that Excel would run as a formula."""
    head = exports.year_awards(year.conn, YEAR, [], enterprise_id=None).assessments[0]
    award = exports.ExportedAward(
        id=1, assessment=head.id, measure="4", year=YEAR, enterprise="=HYPERLINK(\"x\")",
        data_centre="@centre", amount=Decimal("999999999999.94"), eligible=True, state="paid",
        payment_reference="-2+3", reasons=("eligible",), assumptions=(), figures=())
    export = exports.YearAwards(YEAR, (award,), (head,), None)
    [row] = _csv(exports.awards_csv(export))
    assert row["amount (yuan)"] == "999999999999.94"
    assert (row["enterprise"], row["data centre"], row["payment reference"]) == (
        "'=HYPERLINK(\"x\")", "'@centre", "'-2+3")
    content = exports.awards_xlsx(export)
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<v>999999999999.94</v>" in xml and "<f>" not in xml
    sheet = openpyxl.load_workbook(io.BytesIO(content))["Awards"]
    assert sheet["E2"].value == "=HYPERLINK(\"x\")" and sheet["E2"].data_type == "s"


def _pdf_text(content: bytes) -> list[str]:
    """Each page rendered (a drawing error would raise) and its text, whitespace folded."""
    document = pdfium.PdfDocument(content)
    pages = []
    for page in document:
        image = page.render(scale=0.5).to_pil()
        assert image.getextrema() != ((255, 255),) * len(image.getbands())  # not blank
        pages.append(" ".join(page.get_textpage().get_text_range().split()))
    document.close()
    return pages


def _font_or_skip() -> None:
    try:
        find_cjk_font()
    except Unavailable as exc:
        pytest.skip(f"no CJK font on this machine ({exc.reason})")


def test_the_pdf_summary_shows_each_measure_its_awards_and_assumptions(year: Year) -> None:
    _font_or_skip()
    reply = year.client.get("/v1/rewards/report.pdf", params={"year": YEAR},
                            headers=bearer(year.bureau))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/pdf"
    assert reply.headers["content-disposition"] == (
        'attachment; filename="jinsuan-rewards-2025-report.pdf"')
    title, measure_4, measure_5b, assumptions = _pdf_text(reply.content)
    assert "Rewards 2025" in title
    assert f"sha256 {POLICY.sha256}" not in title  # the copy's hash, not the shipped file's
    stored = year.conn.execute("SELECT DISTINCT policy_sha256 FROM reward_assessments"
                               ).fetchone()[0]
    assert f"{POLICY.id} version {POLICY.version}, sha256 {stored}" in title
    for award in year.awards:
        assert f"Assessment {award['assessment']}, measure {award['measure']}" in title
    assert POLICY.rounding in title
    # Totals: 4: 0.00 + 12,000.00 (resting on assumptions); 5b: 3,424.66 + 50,000.00 = 53,424.66
    assert "12,000.00†" in title and "53,424.66" in title and "53,424.66†" not in title

    assert f"Measure 4: {POLICY.measures['4'].title}" in measure_4
    assert f"Measure 5b: {POLICY.measures['5b'].title}" in measure_5b
    for page in (measure_4, measure_5b):
        assert ALPHA in page and BETA in page
    assert "12,000.00†" in measure_4 and "0.00†" in measure_4 and BETA_CENTRE in measure_4
    assert "proposed" in measure_4 and "rests on an assumption" in measure_4
    assert ", ".join(MEASURE_4_ASSUMPTIONS) in measure_4
    assert "50,000.00" in measure_5b and "3,424.66" in measure_5b and "†" not in measure_5b
    assert REFERENCE in measure_5b and "rests on an assumption" not in measure_5b

    assert "Assumptions" in assumptions
    for name in MEASURE_4_ASSUMPTIONS:
        assert name in assumptions
    note = POLICY.measures["4"].parameters["per_rack"].note
    assert " ".join(note.split()[:6]) in assumptions
    assert "5b.rate" not in assumptions  # the policy's own in the copy assessed


def test_an_operators_pdf_is_restricted_to_its_enterprise(year: Year) -> None:
    _font_or_skip()
    reply = year.client.get("/v1/rewards/report.pdf", params={"year": YEAR},
                            headers=bearer(year.beta_operator))
    assert reply.status_code == 200, reply.text
    text = " ".join(_pdf_text(reply.content))
    assert f"Restricted to {BETA}" in text and "3,424.66" in text
    assert ALPHA not in text and "50,000.00" not in text and ALPHA_CENTRE not in text


def test_without_a_chinese_font_the_pdf_is_refused_saying_how_to_fix_it(
        year: Year, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib import font_manager

    monkeypatch.setenv(FONT_ENV, font_manager.findfont("DejaVu Sans"))
    reply = year.client.get("/v1/rewards/report.pdf", params={"year": YEAR},
                            headers=bearer(year.bureau))
    assert reply.status_code == 503
    assert "fonts-wqy-microhei" in reply.json()["error"]["reason"]


def test_exports_of_an_unassessed_year_and_without_a_key(year: Year) -> None:
    for path in ("awards.csv", "awards.xlsx", "report.pdf"):
        missing = year.client.get(f"/v1/rewards/{path}", params={"year": 2024},
                                  headers=bearer(year.bureau))
        assert missing.status_code == 404
        assert missing.json()["error"]["reason"] == "no measure has been assessed for 2024"
        assert year.client.get(f"/v1/rewards/{path}", params={"year": YEAR}).status_code == 401


def test_the_cli_writes_each_export_to_a_file(year: Year, tmp_path: Path) -> None:
    with serving(year.app) as url:
        env = {"JINSUAN_URL": url, "JINSUAN_API_KEY": year.bureau}
        runner = CliRunner()
        out = tmp_path / "awards.csv"
        done = runner.invoke(rewards_app, ["export", "--year", str(YEAR), "--format", "csv",
                                           "--out", str(out)], env=env)
        assert done.exit_code == 0, done.output
        assert "wrote" in done.output
        assert out.read_bytes() == year.client.get(
            "/v1/rewards/awards.csv", params={"year": YEAR}, headers=bearer(year.bureau)).content
        book = tmp_path / "awards.xlsx"
        done = runner.invoke(rewards_app, ["export", "--year", str(YEAR), "--format", "xlsx",
                                           "--out", str(book)], env=env)
        assert done.exit_code == 0, done.output
        assert openpyxl.load_workbook(book).sheetnames[0] == "Awards"
        refused = runner.invoke(rewards_app, ["export", "--year", "2024", "--format", "pdf",
                                              "--out", str(tmp_path / "r.pdf")], env=env)
        assert refused.exit_code == 2
        assert "404: no measure has been assessed for 2024 (year)" in refused.output
        assert not (tmp_path / "r.pdf").exists()
        wrong = runner.invoke(rewards_app, ["export", "--year", str(YEAR), "--format", "doc",
                                            "--out", str(tmp_path / "x")], env=env)
        assert wrong.exit_code == 2 and "--format" in wrong.output
