"""The Redfish probe against sushy-tools' Redfish emulator (sushy-emulator) on loopback.

sushy-emulator 2.2 serves the service root, chassis, systems and Thermal, with HTTP basic auth
from an htpasswd file and TLS, but has no Power, EnvironmentMetrics or SessionService. Running
this file as a script starts the real emulator with those three added the way the DMTF schemas
define them (see ``serve_extended_emulator``): the chassis resources gain ``Power`` /
``EnvironmentMetrics`` links, the readings come from the emulator's config file, and sessions
are checked against the same htpasswd file. Nothing on the client side is faked: the tests fetch
the same resources directly and compare.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from servers import free_port

from agents.probes.redfish import RedfishConfig, RedfishProbe

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
USER, PASSWORD = "operator", "s3cret-pass"
MODERN = "48295eb0-2ad4-4e2f-9b1c-1f0d5c0a6a01"  # links EnvironmentMetrics and Power
LEGACY = "7c1b1f2e-0f43-4c5e-a3a1-2b5d2f4e9c02"  # links Power only
BARE = "0b9f3d6c-5c2e-4d1f-8e7a-3c4b5a6d7e03"  # links neither (an enclosure, say)
READINGS = {
    MODERN: {"PowerWatts": 431.5, "EnergykWh": 1234.567, "PowerConsumedWatts": 999.0},
    LEGACY: {"PowerConsumedWatts": 287.25},
}


# -- the peer: sushy-emulator plus Power, EnvironmentMetrics and SessionService -------------

def serve_extended_emulator() -> int:
    """Run sushy-emulator (argv as for ``sushy-emulator``) with the resources it lacks."""
    import flask
    from sushy_tools import error
    from sushy_tools.emulator import auth_basic
    from sushy_tools.emulator import main as emulator

    app = emulator.app
    sessions: dict[str, str] = {}  # session id -> token

    def readings(identity: str) -> dict[str, float]:
        found = app.config.get("JINSUAN_READINGS", {}).get(app.chassis.uuid(identity))
        if found is None:
            flask.abort(404)
        return found

    chassis_view = app.view_functions["chassis_resource"]

    def chassis_with_links(identity: str):
        response = chassis_view(identity)
        if flask.request.method != "GET" or not isinstance(response, flask.Response):
            return response
        body = response.get_json()
        found = app.config.get("JINSUAN_READINGS", {}).get(app.chassis.uuid(identity), {})
        if "PowerWatts" in found:
            body["EnvironmentMetrics"] = {
                "@odata.id": f"/redfish/v1/Chassis/{identity}/EnvironmentMetrics"}
        if "PowerConsumedWatts" in found:
            body["Power"] = {"@odata.id": f"/redfish/v1/Chassis/{identity}/Power"}
        return flask.jsonify(body)

    app.view_functions["chassis_resource"] = chassis_with_links

    @app.route("/redfish/v1/Chassis/<identity>/EnvironmentMetrics")
    def environment_metrics(identity: str):
        found = readings(identity)
        if "PowerWatts" not in found:
            flask.abort(404)
        return flask.jsonify({
            "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
            "@odata.id": f"/redfish/v1/Chassis/{identity}/EnvironmentMetrics",
            "Id": "EnvironmentMetrics", "Name": "Chassis Environment Metrics",
            "PowerWatts": {"DataSourceUri": f"/redfish/v1/Chassis/{identity}/Sensors/Power",
                           "Reading": found["PowerWatts"]},
            "EnergykWh": {"DataSourceUri": f"/redfish/v1/Chassis/{identity}/Sensors/Energy",
                          "Reading": found["EnergykWh"]},
        })

    @app.route("/redfish/v1/Chassis/<identity>/Power")
    def power(identity: str):
        found = readings(identity)
        return flask.jsonify({
            "@odata.type": "#Power.v1_7_1.Power",
            "@odata.id": f"/redfish/v1/Chassis/{identity}/Power",
            "Id": "Power", "Name": "Power",
            "PowerControl": [{
                "@odata.id": f"/redfish/v1/Chassis/{identity}/Power#/PowerControl/0",
                "MemberId": "0", "Name": "System Power Control",
                "PowerConsumedWatts": found["PowerConsumedWatts"],
            }],
        })

    @app.route("/redfish/v1/SessionService/Sessions", methods=["GET", "POST"])
    def session_collection():
        if flask.request.method == "GET":
            return flask.jsonify({
                "@odata.id": "/redfish/v1/SessionService/Sessions",
                "Members": [{"@odata.id": f"/redfish/v1/SessionService/Sessions/{sid}"}
                            for sid in sessions],
                "Members@odata.count": len(sessions),
            })
        body = flask.request.get_json(force=True)
        try:
            auth_basic.authenticate(app.config["SUSHY_EMULATOR_AUTH_FILE"],
                                    body.get("UserName", ""),
                                    body.get("Password", "").encode())
        except error.FishyError:
            return flask.jsonify({"error": {"message": "bad credentials"}}), 401
        sid, token = secrets.token_hex(4), secrets.token_urlsafe(16)
        sessions[sid] = token
        uri = f"/redfish/v1/SessionService/Sessions/{sid}"
        response = flask.jsonify({"@odata.id": uri, "Id": sid, "UserName": body["UserName"]})
        response.status_code = 201
        response.headers["X-Auth-Token"] = token
        response.headers["Location"] = uri
        return response

    @app.route("/redfish/v1/SessionService/Sessions/<sid>", methods=["DELETE"])
    def delete_session(sid: str):
        if sessions.pop(sid, None) is None:
            flask.abort(404)
        return "", 204

    class SessionAwareAuth(emulator.RedfishAuthMiddleware):
        """Basic auth as before, plus: a session login passes through to its view (which checks
        the credentials), and a request with a live X-Auth-Token needs no basic credentials."""

        def __call__(self, env, start_response):
            path = env.get("PATH_INFO", "").rstrip("/")
            if path == "/redfish/v1/SessionService/Sessions" and env["REQUEST_METHOD"] == "POST":
                return self.app(env, start_response)
            token = env.get("HTTP_X_AUTH_TOKEN")
            if token is not None:
                if token in sessions.values():
                    return self.app(env, start_response)
                return self.format_exception(error.Unauthorized("session expired"))(
                    env, start_response)
            return super().__call__(env, start_response)

    emulator.RedfishAuthMiddleware = SessionAwareAuth
    return emulator.main()


# -- fixtures -------------------------------------------------------------------------------

def write_config(directory: Path, *, basic_auth: bool = True) -> Path:
    import bcrypt

    auth = ""
    if basic_auth:
        htpasswd = directory / "htpasswd"
        digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{USER}:{digest}\n")
        auth = f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
    state = directory / "state"
    state.mkdir()
    config = directory / "emulator.conf"
    config.write_text(
        auth +
        f"SUSHY_EMULATOR_STATE_DIR = {str(state)!r}\n"
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094',"
        " 'name': 'node-1', 'power_state': 'On', 'nics': []}]\n"
        f"SUSHY_EMULATOR_CHASSIS = [\n"
        f"    {{'Id': 'Bare', 'Name': 'Bare', 'UUID': {BARE!r}}},\n"
        f"    {{'Id': 'Modern', 'Name': 'Modern', 'UUID': {MODERN!r}}},\n"
        f"    {{'Id': 'Legacy', 'Name': 'Legacy', 'UUID': {LEGACY!r}}},\n"
        "]\n"
        f"JINSUAN_READINGS = {READINGS!r}\n"
    )
    return config


@contextmanager
def emulator(directory: Path, tls: tuple[Path, Path] | None = None, *,
             plain: bool = False) -> Iterator[str]:
    """Start the extended sushy-emulator; yield its base URL once it answers.

    ``plain``: sushy-emulator as shipped instead, which has no SessionService: its login URL is
    not found (HTTP 404). It runs without the htpasswd file, whose basic-auth check would refuse
    the login before the route is looked up, so it serves everything else without credentials.
    """
    port = free_port()
    server = ["-m", "sushy_tools.emulator.main"] if plain else [__file__]
    command = [sys.executable, *server,
               "--config", str(write_config(directory, basic_auth=not plain)),
               "--fake", "-i", "127.0.0.1", "-p", str(port)]
    scheme = "http"
    if tls is not None:
        command += ["--ssl-certificate", str(tls[0]), "--ssl-key", str(tls[1])]
        scheme = "https"
    log = (directory / "emulator.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (directory / "emulator.log").read_text()
            try:
                httpx.get(f"{base}/redfish/v1/", verify=False, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "emulator did not answer within 30 s"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def redfish_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("sushy_tools")
    with emulator(tmp_path_factory.mktemp("redfish")) as base:
        yield base


def direct(base: str, path: str, **kwargs) -> dict:
    """Fetch a resource from the emulator ourselves, with basic auth."""
    response = httpx.get(base + path, auth=(USER, PASSWORD), timeout=5, follow_redirects=True,
                         **kwargs)
    response.raise_for_status()
    return response.json()


def bmc(meter_id: str, base: str, **extra: object) -> dict:
    return {"id": meter_id, "base_url": base, "username": USER, "password": PASSWORD,
            "racks": ["r7"], "timeout_s": 3.0, **extra}


def values(reading) -> dict[tuple[str, str], float]:
    return {(p.metric, p.device): p.value for p in reading.points}


# -- tests ----------------------------------------------------------------------------------

def test_basic_auth_prefers_environment_metrics(redfish_url: str) -> None:
    probe = RedfishProbe(RedfishConfig(bmcs=[bmc("srv1", redfish_url, auth="basic")]))
    try:
        reading = probe.read(NOW)
    finally:
        probe.close()
    assert reading.errors == []
    served = direct(redfish_url, "/redfish/v1/Chassis/Modern/EnvironmentMetrics")
    legacy = direct(redfish_url, "/redfish/v1/Chassis/Modern/Power")
    got = values(reading)
    assert got[("meter_power_watts", "srv1")] == served["PowerWatts"]["Reading"]
    assert got[("meter_power_watts", "srv1")] != legacy["PowerControl"][0]["PowerConsumedWatts"]
    assert got[("meter_energy_joules_total", "srv1")] == pytest.approx(
        served["EnergykWh"]["Reading"] * 3.6e6)
    [info] = reading.meters
    assert (info.id, info.role, info.measures, info.racks) == ("srv1", "it", "server_input",
                                                               ["r7"])


def test_session_auth_reads_legacy_power_and_deletes_its_session(redfish_url: str) -> None:
    config = RedfishConfig(bmcs=[bmc("srv2", redfish_url, auth="session", chassis="Legacy")])
    probe = RedfishProbe(config)
    try:
        first, second = probe.read(NOW), probe.read(NOW)
        live = direct(redfish_url, "/redfish/v1/SessionService/Sessions")["Members"]
    finally:
        probe.close()
    served = direct(redfish_url, "/redfish/v1/Chassis/Legacy/Power")
    for reading in (first, second):
        assert reading.errors == []
        assert values(reading) == {
            ("meter_power_watts", "srv2"): served["PowerControl"][0]["PowerConsumedWatts"]}
    assert len(live) == 1  # one session, reused by the second cycle
    assert direct(redfish_url, "/redfish/v1/SessionService/Sessions")["Members"] == []


def test_session_is_renewed_when_the_bmc_drops_it(redfish_url: str) -> None:
    probe = RedfishProbe(RedfishConfig(bmcs=[bmc("srv3", redfish_url, chassis="Legacy")]))
    try:
        assert probe.read(NOW).errors == []
        [member] = direct(redfish_url, "/redfish/v1/SessionService/Sessions")["Members"]
        httpx.delete(redfish_url + member["@odata.id"], auth=(USER, PASSWORD)).raise_for_status()
        reading = probe.read(NOW)
    finally:
        probe.close()
    assert reading.errors == []
    assert ("meter_power_watts", "srv3") in values(reading)


@pytest.mark.parametrize("auth", ["basic", "session"])
def test_wrong_password_is_a_clear_error(redfish_url: str, auth: str) -> None:
    config = RedfishConfig(bmcs=[bmc("srv4", redfish_url, auth=auth, password="wrong")])
    probe = RedfishProbe(config)
    try:
        reading = probe.read(NOW)
    finally:
        probe.close()
    [error] = reading.errors
    assert error.startswith(f"BMC srv4 ({redfish_url}): ")
    assert "HTTP 401" in error
    assert reading.points == []


def test_chassis_without_power_is_reported(redfish_url: str) -> None:
    probe = RedfishProbe(RedfishConfig(bmcs=[bmc("srv5", redfish_url, chassis="Bare")]))
    try:
        [error] = probe.read(NOW).errors
    finally:
        probe.close()
    assert error == (f"BMC srv5 ({redfish_url}): chassis /redfish/v1/Chassis/Bare links "
                     "neither EnvironmentMetrics nor Power")


def test_dead_bmc_is_reported_and_healthy_bmc_still_reads(redfish_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = RedfishConfig(bmcs=[bmc("dead", dead, timeout_s=1.0), bmc("ok", redfish_url)])
    probe = RedfishProbe(config)
    try:
        reading = probe.read(NOW)
    finally:
        probe.close()
    [error] = reading.errors
    assert error.startswith(f"BMC dead ({dead}): POST /redfish/v1/SessionService/Sessions: "
                            "ConnectError")
    assert ("meter_power_watts", "ok") in values(reading)
    assert [m.id for m in reading.meters] == ["dead", "ok"]


@pytest.mark.timeout(30)
def test_silent_bmc_fails_within_its_timeout(redfish_url: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = RedfishConfig(bmcs=[bmc("silent", silent, auth="basic", timeout_s=0.5),
                                 bmc("ok", redfish_url, auth="basic")])
    probe = RedfishProbe(config)
    try:
        reading = probe.read(NOW)
    finally:
        probe.close()
        listener.close()
        for conn in held:
            conn.close()
        thread.join(10)
    [error] = reading.errors
    assert error == (f"BMC silent ({silent}): GET /redfish/v1/Chassis: no answer within 0.5 s "
                     "(ReadTimeout)")
    assert ("meter_power_watts", "ok") in values(reading)


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc.pem", directory / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_is_verified_by_default_and_a_configured_ca_is_trusted(tmp_path: Path) -> None:
    pytest.importorskip("sushy_tools")
    cert, key = make_self_signed(tmp_path)
    with emulator(tmp_path, tls=(cert, key)) as base:
        config = RedfishConfig(bmcs=[bmc("default", base, auth="basic"),
                                     bmc("pinned", base, auth="basic", ca_bundle=cert)])
        probe = RedfishProbe(config)
        try:
            reading = probe.read(NOW)
        finally:
            probe.close()
        served = direct(base, "/redfish/v1/Chassis/Modern/EnvironmentMetrics", verify=False)
    [error] = reading.errors
    assert error.startswith(f"BMC default ({base}): GET /redfish/v1/Chassis: ConnectError:")
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert values(reading) == {
        ("meter_power_watts", "pinned"): served["PowerWatts"]["Reading"],
        ("meter_energy_joules_total", "pinned"): pytest.approx(
            served["EnergykWh"]["Reading"] * 3.6e6),
    }


def test_config_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="appears more than once"):
        RedfishConfig(bmcs=[bmc("a", "https://10.0.0.1"), bmc("a", "https://10.0.0.2")])
    with pytest.raises(ValidationError, match="is not a readable file"):
        RedfishConfig(bmcs=[bmc("a", "https://10.0.0.1", ca_bundle=tmp_path / "missing.pem")])
    with pytest.raises(ValidationError, match="base_url"):
        RedfishConfig(bmcs=[bmc("a", "10.0.0.1")])
    with pytest.raises(ValidationError, match="auth"):
        RedfishConfig(bmcs=[bmc("a", "https://10.0.0.1", auth="digest")])
    shown = repr(RedfishConfig(bmcs=[bmc("a", "https://10.0.0.1")]))
    assert PASSWORD not in shown


if __name__ == "__main__":
    sys.exit(serve_extended_emulator())
