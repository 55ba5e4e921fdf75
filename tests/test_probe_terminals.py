"""The edge-terminals probe, reading real files and a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from agents.probes.terminals import TerminalsConfig, TerminalsProbe

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


def served(reading) -> float | None:
    values = [p.value for p in reading.points if p.metric == "site_terminals_served"]
    assert all(p.device == "site" for p in reading.points)
    return values[0] if values else None


# ----- counter file ------------------------------------------------------------------------------


def test_a_plain_integer_file(tmp_path):
    counter = tmp_path / "terminals"
    counter.write_text("312457\n")
    reading = TerminalsProbe(TerminalsConfig(file=counter)).read(NOW)
    assert (served(reading), reading.edge, reading.errors) == (312457, True, [])
    counter.write_text("312460\n")
    assert served(TerminalsProbe(TerminalsConfig(file=counter)).read(NOW)) == 312460


def test_a_json_file_with_a_key_path(tmp_path):
    counter = tmp_path / "stats.json"
    counter.write_text(json.dumps({"edge": {"sites": [{"terminals": 1200}, {"terminals": 98}]}}))
    probe = TerminalsProbe(TerminalsConfig(file=counter, key="edge.sites.1.terminals"))
    assert served(probe.read(NOW)) == 98


@pytest.mark.parametrize(
    ("content", "key", "expected"),
    [
        ('{"edge": {"total": 5}}', "edge.terminals", "key 'edge.terminals' not found (found edge)"),
        ('{"terminals": 12.5}', "terminals", "count 12.5 is not a whole number"),
        ('{"terminals": "12"}', "terminals", "count '12' is not a whole number"),
        ('{"terminals": true}', "terminals", "count True is not a whole number"),
        ("-4", None, "count -4 is negative"),
        ("twelve", None, "not an integer or JSON: 'twelve'"),
        ('{"terminals": 5}', None, "count {'terminals': 5} is not a whole number"),
    ],
)
def test_bad_counter_content_is_an_error_naming_the_file(tmp_path, content, key, expected):
    counter = tmp_path / "counter"
    counter.write_text(content)
    reading = TerminalsProbe(TerminalsConfig(file=counter, key=key)).read(NOW)
    assert reading.errors == [f"terminals: {counter}: {expected}"]
    assert served(reading) is None and reading.edge


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "terminals"
    reading = TerminalsProbe(TerminalsConfig(file=missing)).read(NOW)
    assert reading.errors == [f"terminals: {missing}: cannot read: No such file or directory"]


def test_the_year_is_checked_in_the_site_time_zone(tmp_path):
    counter = tmp_path / "stats.json"
    counter.write_text('{"year": 2026, "terminals": 17}')
    config = TerminalsConfig(file=counter, key="terminals", year_key="year")
    new_year_in_shanghai = datetime(2025, 12, 31, 17, 30, tzinfo=UTC)  # 01:30 on 1 January
    assert served(TerminalsProbe(config).read(new_year_in_shanghai)) == 17
    reading = TerminalsProbe(config).read(datetime(2025, 12, 31, 15, 0, tzinfo=UTC))
    assert reading.errors == [
        f"terminals: {counter}: the count is for 2026, not the current year 2025"
    ]


def test_config_mistakes_are_refused():
    with pytest.raises(ValidationError, match="exactly one of 'file' or 'url'"):
        TerminalsConfig()
    with pytest.raises(ValidationError, match="exactly one of 'file' or 'url'"):
        TerminalsConfig(file="/var/lib/x", url="http://127.0.0.1/x")
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        TerminalsConfig(file="/var/lib/x", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="empty part"):
        TerminalsConfig(file="/var/lib/x", key="edge..terminals")
    with pytest.raises(ValidationError, match="apply to 'url' only"):
        TerminalsConfig(file="/var/lib/x", headers={"Authorization": "Bearer t"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        TerminalsConfig(file="/var/lib/x", path="/var/lib/y")


# ----- HTTP endpoint -----------------------------------------------------------------------------


class Endpoint:
    """A real HTTP server on loopback whose answer each test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.stall = False
        self.requests: list[dict[str, str]] = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests.append(dict(self.headers))
                if endpoint.stall:
                    endpoint.release.wait(30)
                    return
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(endpoint.body)))
                self.end_headers()
                self.wfile.write(endpoint.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/edge/stats"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.stop()


def http_probe(url: str, **options: object) -> TerminalsProbe:
    return TerminalsProbe(TerminalsConfig(url=url, **options))


def test_reads_the_count_from_an_http_endpoint(endpoint):
    endpoint.body = json.dumps({"year": 2025, "stats": {"distinct_terminals": 300_001}}).encode()
    probe = http_probe(
        endpoint.url,
        key="stats.distinct_terminals",
        year_key="year",
        headers={"Authorization": "Bearer edge-token"},
    )
    reading = probe.read(NOW)
    probe.close()
    assert (served(reading), reading.errors, reading.edge) == (300_001, [], True)
    assert endpoint.requests[0]["Authorization"] == "Bearer edge-token"


def test_an_http_error_status_is_reported_with_the_url(endpoint):
    endpoint.status, endpoint.body = 503, b'{"error": "maintenance"}'
    reading = http_probe(endpoint.url).read(NOW)
    assert reading.errors == [f"terminals: {endpoint.url}: HTTP 503 Service Unavailable"]


def test_a_stalled_endpoint_fails_within_the_timeout(endpoint):
    endpoint.stall = True
    reading = http_probe(endpoint.url, timeout_s=0.3).read(NOW)
    assert reading.errors == [f"terminals: {endpoint.url}: no answer within 0.3 s"]


def test_a_dead_endpoint_is_a_clear_error():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stats"
    [error] = http_probe(url, timeout_s=1).read(NOW).errors
    assert error.startswith(f"terminals: {url}: cannot fetch: ")


def test_an_oversized_answer_is_refused(endpoint):
    endpoint.body = b" " * (1 << 20) + b"1"
    [error] = http_probe(endpoint.url).read(NOW).errors
    assert error == f"terminals: {endpoint.url}: answer larger than 1048576 bytes"
