"""The evidence kept with every report: its exact signed bytes, the report each sample came in,
and ``jinsuan evidence verify`` finding any change to either, by report and by hour and figure.

Reports are real signed batches posted through the app (tests/collectors_kit.py); rollups are
computed by the real rollup run; tampering is done as the database's superuser would.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from collectors_kit import Agent, Org, enrol, make_app, make_org, now_ms, steady_series
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from collectors.jobs import maintain_partitions, recompress_evidence
from collectors.rollup import HOUR, floor_hour, run_rollups
from jinsuan.cli import app
from jinsuan.contract.signing import load_public_key, verify
from jinsuan.contract.wire import SIGNATURE_HEADER, Series

runner = CliRunner()


@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    platform_app, _ = make_app(settings, db)
    with TestClient(platform_app) as test_client:
        yield test_client


@pytest.fixture
def org(conn) -> Org:
    return make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")


@pytest.fixture
def agent(client, org) -> Agent:
    return enrol(client, org)


def _kept(conn, agent: Agent, seq: int) -> tuple[int, bytes]:
    """The report's id and its kept body, decompressed."""
    report_id, body = conn.execute(
        "SELECT r.id, b.body FROM reports r JOIN report_bodies b ON b.report_id = r.id"
        " WHERE r.agent_id = %s AND r.seq = %s", (agent.id, seq)).fetchone()
    return report_id, gzip.decompress(bytes(body))


def _part(series: list[Series], start: int, stop: int) -> list[Series]:
    """Points ``start:stop`` of every series: one steady stretch of readings sent in batches."""
    return [Series(metric=s.metric, device=s.device, points=s.points[start:stop])
            for s in series]


def test_the_kept_body_is_the_signed_bytes_and_every_sample_names_its_report(
        client, conn, agent):
    readings = steady_series(now_ms() - 300_000, 8)
    plain = agent.batch(_part(readings, 0, 4))
    zipped = agent.batch(_part(readings, 4, 8))
    sent = {1: plain.model_dump_json().encode(), 2: zipped.model_dump_json().encode()}
    assert agent.post(client, plain).status_code == 200
    signed = agent.signed(sent[2])
    on_the_wire = gzip.compress(sent[2], compresslevel=9)
    reply = client.post("/v1/reports", content=on_the_wire,
                        headers={**signed, "Content-Encoding": "gzip"})
    assert reply.status_code == 200, reply.text

    public_key = load_public_key(conn.execute(
        "SELECT public_key FROM agents WHERE id = %s", (agent.id,)).fetchone()[0])
    for seq, batch in ((1, plain), (2, zipped)):
        report_id, body = _kept(conn, agent, seq)
        assert body == sent[seq]
        sha, signature = conn.execute(
            "SELECT body_sha256, signature FROM reports WHERE id = %s", (report_id,)).fetchone()
        assert bytes(sha) == hashlib.sha256(body).digest()
        assert verify(public_key, body, signature)
        # 10 series (2 accelerators x 3 metrics, 2 meters x 2) x 4 points = 40 samples each
        assert batch.sample_count() == 40
        assert conn.execute("SELECT count(*) FROM samples WHERE report_id = %s",
                            (report_id,)).fetchone()[0] == 40
    assert signed[SIGNATURE_HEADER] == conn.execute(
        "SELECT signature FROM reports WHERE seq = 2").fetchone()[0]
    # a gzip'd report is kept exactly as it came: no second compression
    assert bytes(conn.execute("SELECT body FROM report_bodies b JOIN reports r"
                              " ON r.id = b.report_id WHERE r.seq = 2").fetchone()[0]) \
        == on_the_wire
    # its first and last sample, kept for retention
    first, last = conn.execute(
        "SELECT b.first_ts, b.last_ts FROM report_bodies b JOIN reports r"
        " ON r.id = b.report_id WHERE r.seq = 1").fetchone()
    assert (first, last) == (datetime.fromtimestamp(readings[0].points[0][0] / 1000, UTC),
                             datetime.fromtimestamp(readings[0].points[3][0] / 1000, UTC))
    # a duplicate keeps nothing more
    assert agent.post(client, plain).json()["status"] == "duplicate"
    assert conn.execute("SELECT count(*) FROM report_bodies").fetchone()[0] == 2


@pytest.fixture
def rolled_up(client, conn, db, settings, agent) -> datetime:
    """Two reports with twelve steady readings 10 s apart, ten minutes into an hour two hours
    back, that hour rolled up; returns the hour.

    Hand-worked figures of the hour, from the meters' energy counters (first to last reading,
    110 s): IT 20,000 W x 110 s = 2,200,000 J = 0.611111 kWh (0.6111...), facility
    26,000 W x 110 s = 2,860,000 J = 0.794444 kWh, PUE 2.86 / 2.2 = 1.3.
    """
    hour = floor_hour(datetime.now(UTC)) - 2 * HOUR
    readings = steady_series(int((hour + timedelta(minutes=10)).timestamp() * 1000), 12)
    for start in (0, 6):
        assert agent.post(client, agent.batch(_part(readings, start, start + 6)),
                          compress=True).status_code == 200
    assert run_rollups(db, settings).ran
    stored = conn.execute("SELECT it_kwh, facility_kwh, pue FROM rollup_site_hourly"
                          " WHERE hour = %s", (hour,)).fetchone()
    assert [str(v) for v in stored] == ["0.611111", "0.794444", "1.300000"]
    return hour


def _verify(database_url, monkeypatch, tmp_path, start: datetime, end: datetime,
            site: str = "taiyuan-1"):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JINSUAN_DATA_DIR", str(tmp_path))
    return runner.invoke(app, ["evidence", "verify", "--site", site, "--from",
                               start.isoformat(), "--to", end.isoformat()])


def test_a_clean_range_verifies(rolled_up, database_url, monkeypatch, tmp_path):
    hour = rolled_up
    result = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)

    assert result.exit_code == 0, result.output
    # both reports, 2 x 60 samples (10 series x 6 readings), one hour
    assert (f"site taiyuan-1, {hour:%Y-%m-%dT%H:%M}Z to {hour + HOUR:%Y-%m-%dT%H:%M}Z (UTC):"
            " 1 hour recomputed, 2 reports verified, 120 samples compared with what was signed:"
            " OK"
            ) in result.output
    # the same range in Beijing time, given as a moment with its offset
    beijing = _verify(database_url, monkeypatch, tmp_path,
                      hour.astimezone(timezone(timedelta(hours=8))), hour + HOUR)
    assert beijing.exit_code == 0, beijing.output


def test_a_tampered_body_is_named_by_its_report(rolled_up, conn, agent, database_url,
                                                 monkeypatch, tmp_path):
    hour = rolled_up
    _, second = _kept(conn, agent, 2)
    forged = second.replace(b"20000.0", b"10000.0", 1)
    assert forged != second
    conn.execute("UPDATE report_bodies SET body = %s WHERE report_id ="
                 " (SELECT id FROM reports WHERE agent_id = %s AND seq = 2)",
                 (gzip.compress(forged), agent.id))

    result = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)

    assert result.exit_code == 1, result.output
    name = f"report {agent.id} seq 2"
    assert f"{name}: the kept body is not the one received" in result.output
    assert f"{name}: the signature does not verify with agent {agent.id}'s key" in result.output
    assert f"report {agent.id} seq 1:" not in result.output  # the other report is sound
    assert "FAILED, 2 problems" in result.output

    # The other report's body put in its place with that report's hash and signature: every
    # check of the bytes passes, and the body says which report it really is.
    _, first = _kept(conn, agent, 1)
    conn.execute(
        "UPDATE report_bodies SET body = %s WHERE report_id ="
        " (SELECT id FROM reports WHERE agent_id = %s AND seq = 2)",
        (gzip.compress(first), agent.id))
    conn.execute(
        "UPDATE reports r SET body_sha256 = o.body_sha256, signature = o.signature"
        " FROM reports o WHERE o.agent_id = r.agent_id AND o.seq = 1 AND r.seq = 2")
    swapped = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)
    assert swapped.exit_code == 1
    assert f"{name}: the signed body is agent {agent.id} seq 1's" in swapped.output
    assert "FAILED, 1 problem" in swapped.output


def test_a_tampered_sample_is_named_by_report_and_by_hour_and_figure(
        rolled_up, conn, agent, database_url, monkeypatch, tmp_path):
    hour = rolled_up
    # The IT meter's last counter reading (the 12th, sent in seq 2) raised by 3,600,000 J:
    # 1,000,000,000 + 20,000 W x 110 s = 1,002,200,000 J becomes 1,005,800,000 J.
    last = hour + timedelta(minutes=10, seconds=110)
    changed = conn.execute(
        "UPDATE samples SET value = value + 3600000 WHERE ts = %s AND series_id ="
        " (SELECT id FROM series WHERE metric = 'meter_energy_joules_total' AND device = 'it')",
        (last,)).rowcount
    assert changed == 1

    result = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)

    assert result.exit_code == 1, result.output
    assert (f"report {agent.id} seq 2: meter_energy_joules_total it at"
            f" {last:%Y-%m-%dT%H:%M:%S}.000Z: stored 1005800000.0, signed 1002200000.0"
            ) in result.output
    # IT energy 2,200,000 + 3,600,000 = 5,800,000 J = 1.611111 kWh (1.6111...);
    # PUE 2,860,000 / 5,800,000 = 0.4931034... = 0.493103
    at = f"hour {hour:%Y-%m-%dT%H:%M}Z"
    assert f"{at}: it_kwh stored 0.611111, recomputed from the samples 1.611111" in result.output
    assert f"{at}: pue stored 1.300000, recomputed from the samples 0.493103" in result.output
    assert "facility_kwh" not in result.output
    assert "FAILED, 3 problems" in result.output


def test_samples_that_name_no_report_are_reported(rolled_up, conn, database_url, monkeypatch,
                                                  tmp_path):
    hour = rolled_up
    # A reading slipped in beside the reports, as a writer other than the intake would.
    moment = hour + timedelta(minutes=30)
    conn.execute(
        "INSERT INTO samples (ts, series_id, value) SELECT %s, id, 1 FROM series"
        " WHERE metric = 'accelerator_up' AND device = 'GPU-0000'", (moment,))

    result = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)

    assert result.exit_code == 1, result.output
    at = f"{moment:%Y-%m-%dT%H:%M:%S}Z"
    assert (f"1 samples of accelerator_up GPU-0000 from {at} to {at} name no report"
            in result.output)


def test_verify_says_what_is_wrong_with_its_arguments(database_url, monkeypatch, tmp_path,
                                                      org):
    now = datetime.now(UTC)
    unknown = _verify(database_url, monkeypatch, tmp_path, now - HOUR, now, site="nowhere")
    assert unknown.exit_code == 2 and "no site named 'nowhere'" in unknown.output
    backwards = _verify(database_url, monkeypatch, tmp_path, now, now - HOUR)
    assert backwards.exit_code == 2 and "is not before --to" in backwards.output
    naive = runner.invoke(app, ["evidence", "verify", "--site", "taiyuan-1",
                                "--from", "2026-11-01T00:00", "--to", "2026-11-02"])
    assert naive.exit_code == 2 and "has no time zone" in naive.output


def test_retention_drops_the_bodies_with_their_samples(client, conn, db, agent):
    """Kept for 2 days on day D: raw data from D-2 00:00 UTC on stays. A report whose last
    sample is on D-3 loses its body with its samples; one whose samples begin at D-2 00:30
    keeps it, as does today's; the report rows (hash and signature) all stay."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for moment in (midnight - timedelta(days=3) + timedelta(hours=12),
                   midnight - timedelta(days=2) + timedelta(minutes=30),
                   now - timedelta(minutes=5)):
        readings = steady_series(int(moment.timestamp() * 1000), 3)
        assert agent.post(client, agent.batch(readings), compress=True).status_code == 200

    maintain_partitions(db, 2, now)

    kept = [seq for (seq,) in conn.execute(
        "SELECT r.seq FROM report_bodies b JOIN reports r ON r.id = b.report_id"
        " ORDER BY r.seq").fetchall()]
    assert kept == [2, 3]
    assert conn.execute("SELECT count(*) FROM reports").fetchone()[0] == 3
    # the samples went with the body: 10 series x 3 readings of each of the two reports left
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 60
    assert conn.execute("SELECT count(*) FROM samples s JOIN reports r ON r.id = s.report_id"
                        " WHERE r.seq = 1").fetchone()[0] == 0



def test_aged_bodies_are_recompressed_as_xz_and_still_verify(
        rolled_up, client, conn, db, settings, agent, database_url, monkeypatch, tmp_path):
    """The recompression job rewrites the bodies past its age, and only those, as xz streams
    of the very bytes signed (smaller, but for tiny ones: xz's headers are larger than
    gzip's); `jinsuan evidence verify` still checks every signature and sample; a second run
    finds nothing to do; a damaged xz body is named."""
    hour = rolled_up  # its two reports' samples end at least 1 h 48 min ago
    other = enrol(client, make_org(conn, "Datong Compute", "datong-1", "Datong"))
    an_hour_of_readings = steady_series(int((hour - 2 * HOUR).timestamp() * 1000), 360)
    assert other.post(client, other.batch(an_hour_of_readings), compress=True
                      ).status_code == 200
    fresh = steady_series(now_ms() - 30_000, 3)
    assert other.post(client, other.batch(fresh), compress=True).status_code == 200
    signed = {(sender.id, seq): _kept(conn, sender, seq)[1]
              for sender, seq in ((agent, 1), (agent, 2), (other, 1))}
    gzip_sizes = _sizes(conn)

    aged = settings.model_copy(update={"evidence_recompress_after_days": 0})
    an_hour_ago = datetime.now(UTC) - HOUR
    assert recompress_evidence(db, aged, today=an_hour_ago) == 3
    assert recompress_evidence(db, aged, today=an_hour_ago) == 0

    kept = {(agent_id, seq): codec for agent_id, seq, codec in conn.execute(
        "SELECT r.agent_id, r.seq, b.codec FROM report_bodies b"
        " JOIN reports r ON r.id = b.report_id")}
    assert kept == {(agent.id, 1): "xz", (agent.id, 2): "xz", (other.id, 1): "xz",
                    (other.id, 2): "gzip"}
    for (agent_id, seq), body in signed.items():
        stored = conn.execute("SELECT b.body FROM report_bodies b JOIN reports r"
                              " ON r.id = b.report_id WHERE r.agent_id = %s AND r.seq = %s",
                              (agent_id, seq)).fetchone()[0]
        assert lzma.decompress(bytes(stored)) == body
    big = (other.id, 1)  # 3,600 samples: xz's gain shows
    assert _sizes(conn)[big] < 0.8 * gzip_sizes[big]
    result = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)
    assert result.exit_code == 0, result.output
    assert "2 reports verified, 120 samples compared with what was signed: OK" in result.output

    conn.execute("UPDATE report_bodies SET body = substring(body from 1 for 40)"
                 " WHERE report_id = (SELECT id FROM reports WHERE agent_id = %s AND seq = 2)",
                 (agent.id,))
    damaged = _verify(database_url, monkeypatch, tmp_path, hour, hour + HOUR)
    assert damaged.exit_code == 1
    assert f"report {agent.id} seq 2: the kept body does not decompress" in damaged.output


def _sizes(conn) -> dict[tuple[str, int], int]:
    return {(agent_id, seq): size for agent_id, seq, size in conn.execute(
        "SELECT r.agent_id, r.seq, length(b.body) FROM report_bodies b"
        " JOIN reports r ON r.id = b.report_id")}
