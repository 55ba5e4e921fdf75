"""Operator hygiene: a failed read names the configuration key that is most likely wrong.

Each test misconfigures one key against a real protocol peer on loopback (pymodbus's TCP
server, snmpsim, sushy-emulator), runs ``jinsuan agent check`` and one cycle of the agent on
that config, and finds the hint in both: in the check's table and in the agent's log line for
the failed read. A key's value never appears in either. Then the key is set the way the hint
says and the same peer reads, so the hint named the actual fault.

Also here: a check of twelve SNMP devices builds pysnmp's MIB compiler once, not once per
device (it cost a whole deadline), and a probe that misses its deadline is told apart from an
agent that was too busy to finish it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_probe_modbus import DT, UNIT_ID, encode, modbus_server
from test_probe_redfish import PASSWORD, USER, emulator
from test_probe_snmp import RPDU2_DEVICE_POWER, V3_USERS, served, snmpsim
from typer.testing import CliRunner

from agents.config import load_config
from agents.daemon import Agent, ProbeSlot, check_sources, read_probes, start_probes
from agents.identity import Enrolment, Identity
from agents.probe import Reading
from agents.probes import snmp
from agents.spool import Spool
from jinsuan.cli import agent as agent_cli
from jinsuan.cli import app
from jinsuan.contract import signing

CONFIG = """
[site]
name = "hint-site"

[agent]
platform_url = "http://127.0.0.1:9"
state_dir = "state"
interval_s = 10
metrics_listen = ""
"""


@dataclass(frozen=True)
class Seen:
    check: str  # what `jinsuan agent check` printed
    log: str  # the agent's log lines from one sampling cycle


@pytest.fixture
def run_both(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Write a config with the given probe sections; run `agent check` and one agent cycle."""
    monkeypatch.setattr(agent_cli.console, "width", 2000)  # a hint stays on one line

    def run(probes: str, name: str = "site.toml") -> Seen:
        path = tmp_path / name
        path.write_text(CONFIG + probes, encoding="utf-8")
        checked = CliRunner().invoke(app, ["agent", "check", "--config", str(path)])
        assert checked.exit_code in (0, 1), checked.output
        config = load_config(path)
        key = signing.new_private_key()
        identity = Identity(Enrolment("agt_1", 1, "hint-site", config.agent.platform_url,
                                      signing.public_key_b64(key), "2025-01-01T00:00:00+00:00"),
                            key)
        slots = start_probes(config)
        caplog.clear()
        try:
            with (caplog.at_level(logging.WARNING, logger="jinsuan.agent"),
                  Spool(tmp_path / f"{name}.spool") as spool):
                Agent(config, identity, spool, slots).cycle()
        finally:
            for slot in slots:
                getattr(slot.probe, "close", lambda: None)()
        return Seen(checked.output, caplog.text)

    return run


def failed_read(seen: Seen, where: str) -> tuple[str, str]:
    """The check's table row and the agent's log line that report the read failing at ``where``."""
    [row] = [line for line in seen.check.splitlines() if where in line and "failed" in line]
    [logged] = [line for line in seen.log.splitlines() if where in line]
    return row, logged


# -- Modbus --------------------------------------------------------------------------------


def modbus_section(port: int, *, unit_id: int = UNIT_ID, word_order: str = "big") -> str:
    return f"""
[[probes.modbus]]
[[probes.modbus.meters]]
id = "main"
host = "127.0.0.1"
port = {port}
unit_id = {unit_id}
role = "facility"
measures = "utility_input"
timeout_s = 2
map = {{ name = "inline", power = {{ address = 0, kind = "holding", type = "int32", \
word_order = "{word_order}", unit = "W" }} }}
"""


def test_wrong_word_order_is_hinted_with_the_value_the_other_order_reads(run_both) -> None:
    # 100000 W as int32, most significant word first: registers [0x0001, 0x86A0].
    with modbus_server({0: encode(100_000, DT.INT32, "big")}) as port:
        wrong = run_both(modbus_section(port, word_order="little"), "wrong.toml")
        right = run_both(modbus_section(port, word_order="big"), "right.toml")
    row, logged = failed_read(wrong, "meter main")
    for text in (row, logged):
        # Low word first, they decode as 0x86A00001 = 2258632705, as int32
        # 2258632705 - 2**32 = -2036334591 W: refused as negative.
        assert "-2.03633e+09 W is below 0 W" in text
        assert 'with word_order = "big" the same registers read 100000 W' in text
        assert "word_order is wrong" in text
    assert "main meter_power_watts = 100000" in right.check
    assert "probe modbus" not in right.log


def test_wrong_unit_id_on_a_reachable_server_is_hinted(run_both) -> None:
    # The server serves only unit UNIT_ID (7); pymodbus answers any other unit with
    # exception 04 (server device failure), as some gateways do.
    with modbus_server({0: encode(2_500, DT.INT32)}) as port:
        wrong = run_both(modbus_section(port, unit_id=3), "wrong.toml")
        right = run_both(modbus_section(port), "right.toml")
    row, logged = failed_read(wrong, "meter main")
    for text in (row, logged):
        assert "exception code 4" in text
        assert "accepted the TCP connection" in text
        assert "check unit_id" in text
    assert "main meter_power_watts = 2500" in right.check
    assert "probe modbus" not in right.log


# -- SNMP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snmp_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with snmpsim(tmp_path_factory.mktemp("snmpsim")) as agent:
        yield agent.port


USER_SHA = V3_USERS[0]
WRONG_PRIV = "wrong-priv-key-Zq7x"


def v3_section(port: int, *, priv_key: str, timeout_s: float = 1.0, retries: int = 1) -> str:
    return f"""
[[probes.snmp]]
[[probes.snmp.devices]]
id = "pdu-v3"
host = "127.0.0.1"
port = {port}
version = "v3"
user = "{USER_SHA.name}"
auth_protocol = "{USER_SHA.auth_protocol}"
auth_key = "{USER_SHA.auth_key}"
priv_protocol = "{USER_SHA.priv_protocol}"
priv_key = "{priv_key}"
context = "pdu"
timeout_s = {timeout_s}
retries = {retries}
role = "it"
measures = "pdu_output"
presets = [{{ name = "apc_rpdu2_device" }}]
"""


def test_wrong_priv_key_is_hinted_and_no_key_is_shown(run_both, snmp_port: int) -> None:
    wrong = run_both(v3_section(snmp_port, priv_key=WRONG_PRIV), "wrong.toml")
    right = run_both(v3_section(snmp_port, priv_key=USER_SHA.priv_key), "right.toml")
    row, logged = failed_read(wrong, "snmp device pdu-v3")
    for text in (row, logged):
        assert "check priv_key and priv_protocol" in text
    for key in (WRONG_PRIV, USER_SHA.priv_key, USER_SHA.auth_key):
        assert key not in wrong.check and key not in wrong.log
        assert key not in right.check and key not in right.log
    # apc_rpdu2_device power is in hundredths of a kW: 10 W a count.
    watts = float(served("pdu")[f"{RPDU2_DEVICE_POWER}.1"]) * 10
    assert f"pdu-v3 meter_power_watts = {watts:g}" in right.check


def test_v3_timeout_names_the_keys_as_well_as_the_address(run_both) -> None:
    # An agent that drops a request it cannot decrypt (as net-snmp does for a PDU decrypted
    # with the wrong key) looks, from here, like a bound UDP port that never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        seen = run_both(v3_section(port, priv_key=WRONG_PRIV, timeout_s=0.5, retries=0))
    row, logged = failed_read(seen, "snmp device pdu-v3")
    for text in (row, logged):
        assert "No SNMP response received before timeout" in text
        assert "check priv_key and priv_protocol, then auth_key and auth_protocol" in text
    assert WRONG_PRIV not in seen.check and WRONG_PRIV not in seen.log


def ups_devices(port: int, first: int, count: int) -> str:
    return "".join(f"""
[[probes.snmp.devices]]
id = "ups-{n:02d}"
host = "127.0.0.1"
port = {port}
community = "ups"
role = "it"
measures = "ups_output"
presets = [{{ name = "ups_mib_output" }}]
""" for n in range(first, first + count))


def test_twelve_snmp_devices_compile_mibs_once_and_none_is_blamed(
    snmp_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pysmi", reason="without pysmi pysnmp compiles no MIBs")
    from pysnmp.smi import compiler

    built: list[object] = []

    class CountingCompiler(compiler.MibCompiler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(compiler, "MibCompiler", CountingCompiler)
    monkeypatch.setattr(snmp, "_mib_view", None)  # as in a freshly started agent
    # Two probes of six devices each, read concurrently on their own threads, as `agent check`
    # and the agent do; each device has its own SNMP engine.
    path = tmp_path / "site.toml"
    path.write_text(CONFIG + f"""
[[probes.snmp]]
name = "hall-a"
deadline_s = 8
{ups_devices(snmp_port, 0, 6)}
[[probes.snmp]]
name = "hall-b"
deadline_s = 8
{ups_devices(snmp_port, 6, 6)}
""", encoding="utf-8")
    results = check_sources(load_config(path))

    assert len(built) == 1  # one compiler for the process, not one per device's engine
    assert [(r.probe, r.ok, r.errors) for r in results] == [("hall-a", True, ()),
                                                            ("hall-b", True, ())]
    line1 = float(served("ups")["1.3.6.1.2.1.33.1.4.4.1.4.1"])  # upsOutputPower.1, W
    assert {(p.device, p.value) for r in results for p in r.points} == {
        (f"ups-{n:02d}", line1) for n in range(12)}


# -- Redfish -------------------------------------------------------------------------------


def redfish_section(base: str, auth: str) -> str:
    return f"""
[[probes.redfish]]
[[probes.redfish.bmcs]]
id = "srv1"
base_url = "{base}"
username = "{USER}"
password = "{PASSWORD}"
auth = "{auth}"
timeout_s = 3
"""


def test_missing_session_service_is_hinted_to_use_basic_auth(run_both, tmp_path: Path) -> None:
    pytest.importorskip("sushy_tools")
    (tmp_path / "bmc").mkdir()
    with emulator(tmp_path / "bmc", plain=True) as base:
        session = run_both(redfish_section(base, "session"), "session.toml")
        basic = run_both(redfish_section(base, "basic"), "basic.toml")
    row, logged = failed_read(session, "BMC srv1")
    for text in (row, logged):
        assert "session login at /redfish/v1/SessionService/Sessions returned HTTP 404" in text
        assert 'set auth = "basic"' in text
    for seen in (session, basic):
        assert PASSWORD not in seen.check and PASSWORD not in seen.log
    # With basic auth the login is gone and the read gets as far as the chassis: the plain
    # emulator's chassis report no power, which is now the (different) error.
    row, logged = failed_read(basic, "BMC srv1")
    assert "SessionService" not in row + logged
    assert "links EnvironmentMetrics or Power" in row


# -- deadlines: the device or the agent ----------------------------------------------------


@dataclass
class BusyProbe:
    """Computes until released: an agent too busy to finish, however healthy the devices."""

    name: str = "busy"
    release: threading.Event = field(default_factory=threading.Event)

    def read(self, now: datetime) -> Reading:
        while not self.release.is_set():
            sum(range(10_000))
        return Reading()


@dataclass
class WaitingProbe:
    """Waits until released, using no CPU: a device that does not answer."""

    name: str = "waiting"
    release: threading.Event = field(default_factory=threading.Event)

    def read(self, now: datetime) -> Reading:
        self.release.wait(30)
        return Reading()


@pytest.mark.parametrize(("probe", "expected"), [
    (BusyProbe, "the agent itself was slow, not necessarily the devices"),
    (WaitingProbe, "the agent was mostly idle"),
])
def test_a_missed_deadline_says_whether_the_agent_or_the_devices_were_slow(
    probe: type[BusyProbe | WaitingProbe], expected: str
) -> None:
    slow = probe()
    try:
        [result] = read_probes([ProbeSlot(slow.name, slow, 0.5)], datetime.now(UTC))
    finally:
        slow.release.set()
    [error] = result.errors
    assert result.timed_out
    assert error.startswith("no result within its deadline of 0.5s; abandoned: ")
    assert expected in error
