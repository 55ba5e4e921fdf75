"""The SNMP probe against a real SNMP agent on loopback: snmpsim serving tests/snmpdata.

snmpsim serves each ``<name>.snmprec`` file (``OID|type|value``) to v2c community ``<name>``
and to v3 context ``<name>``. Expected values are computed from those files with the units the
MIB texts state, so a wrong scale, a wrong sum or a value from the wrong OID fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agents.probe import Point
from agents.probes.snmp import (
    PRESETS,
    SnmpDeviceConfig,
    SnmpProbe,
    SnmpProbeConfig,
    plan_meters,
)
from jinsuan.contract.wire import MeterInfo, MeterRole

DATA_DIR = Path(__file__).resolve().parent / "snmpdata"
START_DEADLINE_S = 60.0
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# Units as the MIB texts state them, written out here independently of the probe's tables.
W_PER_HUNDREDTH_KW = 10.0
J_PER_TENTH_KWH = 0.1 * 3_600_000
J_PER_WH = 3600.0

UPS_LINES = "1.3.6.1.2.1.33.1.4.4.1.4"  # UPS-MIB upsOutputPower, W
RPDU2_DEVICE_POWER = "1.3.6.1.4.1.318.1.1.26.4.3.1.5"  # hundredths of kW
RPDU2_DEVICE_ENERGY = "1.3.6.1.4.1.318.1.1.26.4.3.1.9"  # tenths of kWh
RPDU2_PHASE_POWER = "1.3.6.1.4.1.318.1.1.26.6.3.1.7"  # hundredths of kW
RPDU2_OUTLET_POWER = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7"  # W
RPDU2_OUTLET_ENERGY = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.11"  # tenths of kWh
VENDOR = "1.3.6.1.4.1.32473.1"  # RFC 5612 documentation enterprise number: a made-up vendor


@dataclass(frozen=True)
class V3User:
    name: str
    auth_protocol: str  # as the probe config spells it
    auth_key: str
    priv_protocol: str
    priv_key: str
    snmpsim_auth: str  # as snmpsim spells it
    snmpsim_priv: str


V3_USERS = (
    V3User("ops-sha", "SHA", "auth-key-sha1", "AES", "priv-key-aes128", "SHA", "AES"),
    V3User(
        "ops-sha256",
        "SHA-256",
        "auth-key-sha256",
        "AES-256",
        "priv-key-aes256",
        "SHA256",
        "AES256BLMT",
    ),
    V3User("ops-md5", "MD5", "auth-key-md5", "DES", "priv-key-des", "MD5", "DES"),
)


def served(name: str) -> dict[str, str]:
    """The values snmpsim serves from ``<name>.snmprec``, by OID."""
    lines = (DATA_DIR / f"{name}.snmprec").read_text().splitlines()
    return {oid: value for oid, _, value in (line.split("|", 2) for line in lines if line)}


def free_udp_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        return sock.getsockname()[1]


def free_udp6_port() -> int | None:
    """A free port on IPv6 loopback, or None where the host has no IPv6."""
    try:
        return free_udp_port(socket.AF_INET6)
    except OSError:
        return None


@dataclass(frozen=True)
class Agent:
    port: int
    ipv6_port: int | None


def device(port: int, **fields: Any) -> SnmpDeviceConfig:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "role": "it",
        "measures": "pdu_output",
        "timeout_s": 1.0,
        "retries": 1,
    }
    if fields.get("version", "v2c") == "v2c":
        base["community"] = "pdu"
    return SnmpDeviceConfig.model_validate(base | fields)


def read_once(*devices: SnmpDeviceConfig):
    with SnmpProbe(SnmpProbeConfig(devices=list(devices))) as probe:
        return probe.read(NOW)


def values(reading) -> dict[tuple[str, str], float]:
    return {(p.metric, p.device): p.value for p in reading.points}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    with snmpsim(tmp_path_factory.mktemp("snmpsim")) as running:
        yield running


@contextmanager
def snmpsim(work: Path) -> Iterator[Agent]:
    """snmpsim on a free loopback UDP port, answering v2c and the v3 users above."""
    pytest.importorskip("pysnmp", reason="the snmp probe's library is not installed")
    pytest.importorskip("snmpsim", reason="the SNMP agent simulator is not installed")
    port, ipv6_port = free_udp_port(), free_udp6_port()
    args = [
        f"--data-dir={DATA_DIR}",
        f"--cache-dir={work / 'cache'}",
        f"--agent-udpv4-endpoint=127.0.0.1:{port}",
    ]
    if ipv6_port is not None:
        args.append(f"--agent-udpv6-endpoint=[::1]:{ipv6_port}")
    for user in V3_USERS:
        args += [
            f"--v3-user={user.name}",
            f"--v3-auth-key={user.auth_key}",
            f"--v3-auth-proto={user.snmpsim_auth}",
            f"--v3-priv-key={user.priv_key}",
            f"--v3-priv-proto={user.snmpsim_priv}",
        ]
    log = (work / "snmpsim.log").open("w")
    # snmpsim refuses to run as root unless told; the test containers run as root.
    env = os.environ | {"SNMPSIM_ALLOW_ROOT": "true"}
    code = "import sys; from snmpsim.commands.responder import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        wait_until_answering(proc, port, work / "snmpsim.log")
        yield Agent(port, ipv6_port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_until_answering(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll with real SNMP GETs (each bounded by its timeout) until the agent answers."""
    probe_device = device(
        port,
        id="ready",
        community="ups",
        timeout_s=0.5,
        retries=0,
        quantities=[{"oid": f"{UPS_LINES}.1", "quantity": "power", "unit": "W"}],
    )
    deadline = time.monotonic() + START_DEADLINE_S
    with SnmpProbe(SnmpProbeConfig(devices=[probe_device])) as probe:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"snmpsim exited with {proc.returncode}:\n{log.read_text()}")
            reading = probe.read(NOW)
            if not reading.errors:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"snmpsim did not answer: {reading.errors}\n{log.read_text()}")


# --- v2c: standard and vendor MIBs, units and sums -------------------------------------------


def test_ups_output_lines_sum_into_one_it_meter(agent: Agent) -> None:
    ups = device(
        agent.port,
        id="ups-1",
        community="ups",
        measures="ups_output",
        racks=["A01", "A02"],
        presets=[{"name": "ups_mib_output", "indices": [1, 2, 3]}],
    )
    reading = read_once(ups)

    data = served("ups")
    lines = int(data["1.3.6.1.2.1.33.1.4.3.0"])  # upsOutputNumLines
    expected_w = sum(float(data[f"{UPS_LINES}.{n}"]) for n in range(1, lines + 1))
    assert reading.errors == []
    assert reading.points == [Point("meter_power_watts", "ups-1", expected_w)]
    assert reading.meters == [
        MeterInfo(id="ups-1", role=MeterRole.IT, measures="ups_output", racks=["A01", "A02"])
    ]


def test_apc_pdu_device_power_and_energy_are_scaled_from_hundredths_kw_and_tenths_kwh(
    agent: Agent,
) -> None:
    pdu = device(agent.port, id="pdu-a1", presets=[{"name": "apc_rpdu2_device"}])
    reading = read_once(pdu)

    data = served("pdu")
    assert reading.errors == []
    assert values(reading) == {
        ("meter_power_watts", "pdu-a1"): float(data[f"{RPDU2_DEVICE_POWER}.1"])
        * W_PER_HUNDREDTH_KW,
        ("meter_energy_joules_total", "pdu-a1"): pytest.approx(
            float(data[f"{RPDU2_DEVICE_ENERGY}.1"]) * J_PER_TENTH_KWH
        ),
    }


def test_apc_phases_sum_by_default(agent: Agent) -> None:
    pdu = device(
        agent.port, id="pdu-a1", presets=[{"name": "apc_rpdu2_phase", "indices": [1, 2, 3]}]
    )
    reading = read_once(pdu)

    data = served("pdu")
    phases_w = sum(float(data[f"{RPDU2_PHASE_POWER}.{n}"]) * W_PER_HUNDREDTH_KW for n in (1, 2, 3))
    assert reading.errors == []
    assert values(reading) == {("meter_power_watts", "pdu-a1"): pytest.approx(phases_w)}


def test_outlets_become_their_own_meters_when_sum_is_false(agent: Agent) -> None:
    pdu = device(
        agent.port,
        id="pdu-a1",
        sum=False,
        racks=["A01"],
        presets=[{"name": "apc_rpdu2_outlet", "indices": [1, 2, 3]}],
    )
    reading = read_once(pdu)

    data = served("pdu")
    expected = {}
    for n in (1, 2, 3):
        meter = f"pdu-a1/outlet{n}"
        expected[("meter_power_watts", meter)] = float(data[f"{RPDU2_OUTLET_POWER}.{n}"])
        expected[("meter_energy_joules_total", meter)] = pytest.approx(
            float(data[f"{RPDU2_OUTLET_ENERGY}.{n}"]) * J_PER_TENTH_KWH
        )
    assert reading.errors == []
    assert values(reading) == expected
    assert [m.id for m in reading.meters] == [f"pdu-a1/outlet{n}" for n in (1, 2, 3)]
    assert all(m.racks == ["A01"] and m.measures == "pdu_output" for m in reading.meters)


def test_vendor_oids_from_config_read_counter64_gauge_and_numeric_string(agent: Agent) -> None:
    vendor = device(
        agent.port,
        id="busway-1",
        quantities=[
            {"oid": f"{VENDOR}.1.0", "quantity": "energy", "unit": "Wh"},  # Counter64
            {"oid": f"{VENDOR}.2.0", "quantity": "power", "unit": "W"},  # "1530.5"
            {"oid": f".{VENDOR}.3.0", "quantity": "power", "unit": "0.1 kW"},  # Gauge32
        ],
    )
    reading = read_once(vendor)

    data = served("pdu")
    assert reading.errors == []
    assert values(reading) == {
        ("meter_energy_joules_total", "busway-1"): float(data[f"{VENDOR}.1.0"]) * J_PER_WH,
        ("meter_power_watts", "busway-1"): pytest.approx(
            float(data[f"{VENDOR}.2.0"]) + float(data[f"{VENDOR}.3.0"]) * 100.0
        ),
    }


def test_ipv6_address(agent: Agent) -> None:
    if agent.ipv6_port is None:
        pytest.skip("this host has no IPv6 loopback")
    ups = device(
        agent.ipv6_port,
        host="::1",
        id="ups-1",
        community="ups",
        presets=[{"name": "ups_mib_output"}],
    )
    reading = read_once(ups)

    assert reading.errors == []
    assert values(reading) == {
        ("meter_power_watts", "ups-1"): float(served("ups")[f"{UPS_LINES}.1"])
    }


def test_scale_multiplies_on_top_of_the_unit(agent: Agent) -> None:
    vendor = device(
        agent.port,
        id="busway-1",
        quantities=[{"oid": f"{VENDOR}.3.0", "quantity": "power", "unit": "W", "scale": 0.5}],
    )
    reading = read_once(vendor)

    assert values(reading) == {
        ("meter_power_watts", "busway-1"): float(served("pdu")[f"{VENDOR}.3.0"]) * 0.5
    }


def test_minus_one_unsupported_outlet_is_an_error_and_the_other_outlets_still_read(
    agent: Agent,
) -> None:
    pdu = device(
        agent.port,
        id="pdu-a1",
        sum=False,
        presets=[{"name": "apc_rpdu2_outlet", "indices": [3, 4]}],
    )
    reading = read_once(pdu)

    assert set(values(reading)) == {
        ("meter_power_watts", "pdu-a1/outlet3"),
        ("meter_energy_joules_total", "pdu-a1/outlet3"),
    }
    assert len(reading.errors) == 2
    for error, oid in zip(reading.errors, (RPDU2_OUTLET_POWER, RPDU2_OUTLET_ENERGY), strict=True):
        assert f"127.0.0.1:{agent.port}" in error
        assert "pdu-a1/outlet4" in error
        assert f"{oid}.4" in error
        assert "negative reading -1" in error


def test_one_bad_oid_drops_the_whole_sum_it_belongs_to_not_the_other_quantity(
    agent: Agent,
) -> None:
    pdu = device(
        agent.port,
        id="pdu-a1",
        quantities=[
            {"oid": f"{RPDU2_OUTLET_POWER}.1", "quantity": "power", "unit": "W"},
            {"oid": f"{RPDU2_OUTLET_POWER}.99", "quantity": "power", "unit": "W"},
            {"oid": f"{RPDU2_OUTLET_ENERGY}.1", "quantity": "energy", "unit": "0.1 kWh"},
            {"oid": f"{VENDOR}.4.0", "quantity": "energy", "unit": "Wh"},
        ],
    )
    reading = read_once(pdu)

    assert reading.points == []
    assert len(reading.errors) == 2
    assert f"{RPDU2_OUTLET_POWER}.99" in reading.errors[0]
    assert "no such OID" in reading.errors[0]
    assert f"{VENDOR}.4.0" in reading.errors[1]
    assert "'n/a' is not a number" in reading.errors[1]


def test_a_mis_scaled_reading_is_refused_by_the_catalogue_bound(agent: Agent) -> None:
    # A Counter64 energy register declared as power in kW: ~1.2e13 W is no real meter.
    wrong = device(
        agent.port,
        id="busway-1",
        quantities=[{"oid": f"{VENDOR}.1.0", "quantity": "power", "unit": "kW"}],
    )
    reading = read_once(wrong)

    assert reading.points == []
    assert len(reading.errors) == 1
    assert "above the plausible bound" in reading.errors[0]
    assert "check unit and scale" in reading.errors[0]


def test_small_requests_read_the_same_values_as_one_large_request(agent: Agent) -> None:
    outlets = {"name": "apc_rpdu2_outlet", "indices": [1, 2, 3]}
    whole = read_once(device(agent.port, id="pdu-a1", sum=False, presets=[outlets]))
    split = read_once(
        device(agent.port, id="pdu-a1", sum=False, presets=[outlets], max_oids_per_request=1)
    )

    assert whole.errors == split.errors == []
    assert len(split.points) == 6
    assert split.points == whole.points


# --- v3 ---------------------------------------------------------------------------------------


def v3_device(port: int, account: V3User, **overrides: Any) -> SnmpDeviceConfig:
    fields: dict[str, Any] = {
        "id": "pdu-v3",
        "version": "v3",
        "user": account.name,
        "auth_protocol": account.auth_protocol,
        "auth_key": account.auth_key,
        "priv_protocol": account.priv_protocol,
        "priv_key": account.priv_key,
        "context": "pdu",
        "presets": [{"name": "apc_rpdu2_device"}],
    }
    return device(port, **(fields | overrides))


@pytest.mark.parametrize("user", V3_USERS, ids=lambda u: f"{u.auth_protocol}+{u.priv_protocol}")
def test_v3_auth_priv_reads_the_served_values(agent: Agent, user: V3User) -> None:
    reading = read_once(v3_device(agent.port, user))

    data = served("pdu")
    assert reading.errors == []
    assert values(reading) == {
        ("meter_power_watts", "pdu-v3"): float(data[f"{RPDU2_DEVICE_POWER}.1"])
        * W_PER_HUNDREDTH_KW,
        ("meter_energy_joules_total", "pdu-v3"): pytest.approx(
            float(data[f"{RPDU2_DEVICE_ENERGY}.1"]) * J_PER_TENTH_KWH
        ),
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"auth_key": "not-the-auth-key"}, "authentication failed: check auth_key"),
        ({"priv_key": "not-the-priv-key"}, "decryption failed: check priv_key"),
        ({"auth_protocol": "MD5"}, "authentication failed: check auth_key"),
        ({"user": "intruder"}, "the agent has no such v3 user"),
    ],
    ids=["auth-key", "priv-key", "auth-protocol", "user"],
)
def test_v3_wrong_credentials_fail_clearly_and_name_the_address(
    agent: Agent, overrides: dict[str, str], expected: str
) -> None:
    good = device(agent.port, id="ups-1", community="ups", presets=[{"name": "ups_mib_output"}])
    bad = v3_device(agent.port, V3_USERS[0], **overrides)
    reading = read_once(bad, good)

    assert [p.device for p in reading.points] == ["ups-1"]
    assert len(reading.errors) == 1
    assert reading.errors[0].startswith(f"snmp device pdu-v3 at 127.0.0.1:{agent.port}: ")
    assert expected in reading.errors[0]
    assert "not-the" not in reading.errors[0]  # keys never appear in messages


# --- failures, threads, lifecycle --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_dead_port_times_out_while_a_healthy_device_in_the_same_probe_still_reads(
    agent: Agent,
) -> None:
    dead_port = free_udp_port()
    dead = device(
        dead_port, id="pdu-dead", timeout_s=0.5, retries=1, presets=[{"name": "apc_rpdu2_device"}]
    )
    ups = device(agent.port, id="ups-1", community="ups", presets=[{"name": "ups_mib_output"}])
    reading = read_once(dead, ups)

    assert reading.points == [
        Point("meter_power_watts", "ups-1", float(served("ups")[f"{UPS_LINES}.1"]))
    ]
    assert len(reading.errors) == 1
    # pysnmp's own per-request timeout fired, not the probe's outer safety bound.
    assert reading.errors[0].startswith(f"snmp device pdu-dead at 127.0.0.1:{dead_port}: ")
    assert "No SNMP response received before timeout" in reading.errors[0]
    # The dead device's meter stays in the inventory, so its gap is visible to the platform.
    assert [m.id for m in reading.meters] == ["pdu-dead", "ups-1"]


def test_wrong_community_is_a_timeout_naming_the_device(agent: Agent) -> None:
    wrong = device(
        agent.port,
        id="pdu-a1",
        community="nope",
        timeout_s=0.5,
        retries=0,
        presets=[{"name": "apc_rpdu2_device"}],
    )
    reading = read_once(wrong)

    assert reading.points == []
    assert len(reading.errors) == 1
    assert f"pdu-a1 at 127.0.0.1:{agent.port}" in reading.errors[0]
    assert "community" in reading.errors[0]


def test_reads_repeatedly_from_worker_threads(agent: Agent) -> None:
    pdu = device(agent.port, id="pdu-a1", presets=[{"name": "apc_rpdu2_device"}])
    ups = device(agent.port, id="ups-1", community="ups", presets=[{"name": "ups_mib_output"}])
    with (
        SnmpProbe(SnmpProbeConfig(devices=[pdu, ups])) as probe,
        ThreadPoolExecutor(max_workers=3) as pool,
    ):
        readings = list(pool.map(lambda _: probe.read(NOW), range(6)))

    assert all(r.errors == [] for r in readings)
    assert len(readings[0].points) == 3
    assert all(r.points == readings[0].points for r in readings)


def test_close_is_idempotent_and_a_closed_probe_refuses_to_read(agent: Agent) -> None:
    probe = SnmpProbe(
        SnmpProbeConfig(
            devices=[device(agent.port, id="pdu-a1", presets=[{"name": "apc_rpdu2_device"}])]
        )
    )
    assert probe.read(NOW).errors == []
    probe.close()
    probe.close()
    with pytest.raises(RuntimeError, match="closed"):
        probe.read(NOW)


# --- configuration (no agent needed) ------------------------------------------------------------


def test_config_from_toml() -> None:
    text = """
    [[probes.snmp]]
    name = "hall-a"

    [[probes.snmp.devices]]
    id = "ups-1"
    host = "10.1.0.20"
    community = "public"
    role = "it"
    measures = "ups_output"
    racks = ["A01", "A02"]
    presets = [{ name = "ups_mib_output", indices = [1, 2, 3] }]

    [[probes.snmp.devices]]
    id = "pdu-a1"
    host = "10.1.0.31"
    version = "v3"
    user = "jinsuan"
    auth_protocol = "SHA-256"
    auth_key = "0123456789"
    priv_protocol = "AES"
    priv_key = "9876543210"
    role = "it"
    measures = "pdu_output"
    sum = false
    presets = [{ name = "apc_rpdu2_outlet", indices = [1, 2] }]
    """
    config = SnmpProbeConfig.model_validate(tomllib.loads(text)["probes"]["snmp"][0])

    assert config.name == "hall-a"
    ups, pdu = config.devices
    assert ups.port == 161 and ups.version == "v2c"
    assert [m.info.id for m in plan_meters(ups)] == ["ups-1"]
    assert [q.oid for q in plan_meters(ups)[0].sources] == [f"{UPS_LINES}.{n}" for n in (1, 2, 3)]
    assert [m.info.id for m in plan_meters(pdu)] == ["pdu-a1/outlet1", "pdu-a1/outlet2"]
    assert "9876543210" not in repr(config)


def test_presets_are_numeric_oids_with_units_that_fit_their_quantity() -> None:
    for name in PRESETS:
        pdu = SnmpDeviceConfig(
            id="x",
            host="h",
            community="c",
            role="it",
            measures="pdu_output",
            presets=[{"name": name, "indices": [7]}],
        )
        for q in pdu.all_quantities():
            assert q.oid.endswith(".7")
            assert q.factor > 0


BASE = {"id": "pdu-a1", "host": "10.0.0.5", "role": "it", "measures": "pdu_output"}
POWER = {"oid": f"{RPDU2_DEVICE_POWER}.1", "quantity": "power", "unit": "0.01 kW"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"quantities": [POWER]}, "version v2c needs community"),
        ({"community": "c", "user": "u", "quantities": [POWER]}, "for version v3 only"),
        ({"version": "v3", "quantities": [POWER]}, "version v3 needs user"),
        (
            {"version": "v3", "user": "u", "priv_key": "12345678", "quantities": [POWER]},
            "authPriv needs auth_key",
        ),
        (
            {
                "version": "v3",
                "user": "u",
                "auth_key": "short",
                "priv_key": "12345678",
                "quantities": [POWER],
            },
            "at least 8 characters",
        ),
        (
            {
                "version": "v3",
                "user": "u",
                "security_level": "authNoPriv",
                "auth_key": "12345678",
                "priv_key": "12345678",
                "quantities": [POWER],
            },
            "priv_key is unused",
        ),
        ({"community": "c", "priv_protocol": "3DES", "quantities": [POWER]}, "priv_protocol"),
        ({"community": "c"}, "at least one entry in quantities or presets"),
        (
            {"community": "c", "quantities": [POWER | {"oid": "rPDU2DeviceStatusPower.1"}]},
            "not a numeric OID",
        ),
        ({"community": "c", "quantities": [POWER | {"unit": "kWh"}]}, "not a power unit"),
        ({"community": "c", "quantities": [POWER | {"unit": "MW"}]}, "unit"),
        ({"community": "c", "sum": False, "quantities": [POWER]}, "needs a channel"),
        (
            {"community": "c", "presets": [{"name": "apc_rpdu2_device"}], "quantities": [POWER]},
            f"OID {RPDU2_DEVICE_POWER}.1 is listed twice",
        ),
        (
            {
                "community": "c",
                "sum": False,
                "quantities": [
                    POWER | {"channel": "L1"},
                    POWER | {"channel": "L1", "oid": f"{RPDU2_PHASE_POWER}.1"},
                ],
            },
            "channel 'L1' has two power OIDs",
        ),
        (
            {"community": "c", "sum": False, "quantities": [POWER | {"channel": "bad channel"}]},
            "channel",
        ),
        ({"community": "c", "port": 0, "quantities": [POWER]}, "port"),
        ({"community": "c", "quantities": [POWER], "colour": "red"}, "colour"),
    ],
)
def test_bad_device_config_is_refused_with_a_clear_message(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        SnmpDeviceConfig.model_validate(BASE | fields)


def test_meter_ids_must_be_unique_within_a_probe() -> None:
    pdu = SnmpDeviceConfig.model_validate(BASE | {"community": "c", "quantities": [POWER]})
    with pytest.raises(ValidationError, match="meter id 'pdu-a1' is used twice"):
        SnmpProbeConfig(devices=[pdu, pdu])
