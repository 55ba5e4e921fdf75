"""The Modbus probe against pymodbus's own TCP server on loopback.

Each test serves register values encoded with pymodbus's converter (the same encoding a meter
uses on the wire), reads them with the probe and checks the W / J values it reports.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

pytest.importorskip("pymodbus")

from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agents.probes.modbus import ModbusConfig, ModbusProbe
from agents.probes.registermaps import available_maps, load_map

NOW = datetime(2025, 1, 1, tzinfo=UTC)
DT = ModbusTcpClient.DATATYPE
UNIT_ID = 7


def encode(value: float, datatype: DT, word_order: str = "big") -> list[int]:
    return ModbusTcpClient.convert_to_registers(value, datatype, word_order=word_order)


def swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


@contextmanager
def modbus_server(
    holding: dict[int, list[int]], inputs: dict[int, list[int]] | None = None
) -> Iterator[int]:
    """Run pymodbus's TCP server on a free loopback port in a background thread; yield the port."""
    inputs = inputs or {}
    blocks = (
        [SimData(0, values=False, datatype=DataType.BITS)],
        [SimData(0, values=False, datatype=DataType.BITS)],
        [SimData(a, values=v, datatype=DataType.REGISTERS) for a, v in sorted(holding.items())]
        or [SimData(0, values=0, datatype=DataType.REGISTERS)],
        [SimData(a, values=v, datatype=DataType.REGISTERS) for a, v in sorted(inputs.items())]
        or [SimData(0, values=0, datatype=DataType.REGISTERS)],
    )
    device = SimDevice(id=UNIT_ID, simdata=blocks)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def start() -> None:
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        state["server"] = server
        state["port"] = server.transport.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    assert ready.wait(10)
    try:
        yield int(state["port"])  # type: ignore[arg-type]
    finally:
        asyncio.run_coroutine_threadsafe(state["server"].shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP peer that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()
        thread.join(10)


def dead_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meter(meter_id: str, port: int, register_map: object, **extra: object) -> dict:
    return {
        "id": meter_id, "host": "127.0.0.1", "port": port, "unit_id": UNIT_ID,
        "map": register_map, "role": "facility", "measures": "utility_input",
        "racks": ["r1"], "timeout_s": 2.0, **extra,
    }


def values(reading) -> dict[tuple[str, str], float]:
    return {(p.metric, p.device): p.value for p in reading.points}


# (map, served power registers, served energy registers, expected W, expected J)
SHIPPED = {
    "schneider-pm5xxx": (
        {3059: encode(412.75, DT.FLOAT32), 3203: encode(987_654_321, DT.INT64)},
        {},
        412.75e3,
        987_654_321 * 3600.0,
    ),
    "eastron-sdm630": (
        {},
        {52: encode(5321.5, DT.FLOAT32), 72: encode(12345.25, DT.FLOAT32)},
        5321.5,
        12345.25 * 3.6e6,
    ),
    "acrel-adw300": (
        {36: encode(18_250, DT.INT32), 62: encode(4_567_891, DT.INT32)},
        {},
        18_250.0,
        4_567_891 * 0.01 * 3.6e6,
    ),
    "acrel-ddsy1352": (
        {0: encode(1_234_567, DT.UINT32), 13: encode(3_456, DT.INT16)},
        {},
        3_456 * 0.001 * 1e3,
        1_234_567 * 0.01 * 3.6e6,
    ),
}


def test_every_shipped_map_has_a_served_case() -> None:
    assert sorted(SHIPPED) == available_maps()


@pytest.mark.parametrize("map_name", sorted(SHIPPED))
def test_shipped_map_reads_served_values(map_name: str) -> None:
    holding, inputs, watts, joules = SHIPPED[map_name]
    with modbus_server(holding, inputs) as port:
        probe = ModbusProbe(ModbusConfig(meters=[meter("m1", port, map_name)]))
        reading = probe.read(NOW)
    assert reading.errors == []
    got = values(reading)
    assert got[("meter_power_watts", "m1")] == pytest.approx(watts, rel=1e-6)
    assert got[("meter_energy_joules_total", "m1")] == pytest.approx(joules, rel=1e-9)
    [info] = reading.meters
    assert (info.id, info.role, info.measures, info.racks) == ("m1", "facility", "utility_input",
                                                               ["r1"])


@pytest.mark.parametrize("word_order", ["big", "little"])
def test_word_order(word_order: str) -> None:
    inline = {
        "name": "inline",
        "power": {"address": 100, "kind": "holding", "type": "float32",
                  "word_order": word_order, "unit": "kW"},
        "energy": {"address": 200, "kind": "input", "type": "uint64",
                   "word_order": word_order, "scale": 0.1, "unit": "kWh"},
    }
    holding = {100: encode(75.5, DT.FLOAT32, word_order)}
    inputs = {200: encode(2**40 + 12345, DT.UINT64, word_order)}
    with modbus_server(holding, inputs) as port:
        reading = ModbusProbe(ModbusConfig(meters=[meter("m1", port, inline)])).read(NOW)
    assert reading.errors == []
    got = values(reading)
    assert got[("meter_power_watts", "m1")] == pytest.approx(75_500.0)
    assert got[("meter_energy_joules_total", "m1")] == pytest.approx(
        (2**40 + 12345) * 0.1 * 3.6e6, rel=1e-12
    )


def test_word_order_mismatch_reads_a_different_value() -> None:
    """The word order in the map matters: the same registers decode differently."""
    inline = {"name": "wrong", "power": {"address": 0, "kind": "holding", "type": "uint32",
                                         "word_order": "little", "unit": "W"}}
    with modbus_server({0: encode(70_000, DT.UINT32, "big")}) as port:
        reading = ModbusProbe(ModbusConfig(meters=[meter("m1", port, inline)])).read(NOW)
    assert values(reading)[("meter_power_watts", "m1")] != 70_000


def test_byte_order_little_and_int16_float64() -> None:
    inline = {
        "name": "swapped",
        "power": {"address": 10, "kind": "holding", "type": "int16", "byte_order": "little",
                  "scale": 10, "unit": "W"},
        "energy": {"address": 20, "kind": "holding", "type": "float64", "byte_order": "little",
                   "word_order": "little", "unit": "MWh"},
    }
    holding = {
        10: swap_bytes(encode(1234, DT.INT16)),
        20: swap_bytes(encode(98.765, DT.FLOAT64, "little")),
    }
    with modbus_server(holding) as port:
        reading = ModbusProbe(ModbusConfig(meters=[meter("m1", port, inline)])).read(NOW)
    assert reading.errors == []
    got = values(reading)
    assert got[("meter_power_watts", "m1")] == pytest.approx(12_340.0)
    assert got[("meter_energy_joules_total", "m1")] == pytest.approx(98.765 * 3.6e9)


def test_dead_meter_is_reported_and_healthy_meter_still_reads() -> None:
    port_dead = dead_port()
    with modbus_server({}, {52: encode(800.0, DT.FLOAT32), 72: encode(5.0, DT.FLOAT32)}) as port:
        config = ModbusConfig(meters=[
            meter("dead", port_dead, "eastron-sdm630", timeout_s=1.0),
            meter("ok", port, "eastron-sdm630"),
        ])
        reading = ModbusProbe(config).read(NOW)
    [error] = reading.errors
    assert error.startswith(f"meter dead (127.0.0.1:{port_dead} unit {UNIT_ID}): cannot connect")
    got = values(reading)
    assert got == {("meter_power_watts", "ok"): 800.0,
                   ("meter_energy_joules_total", "ok"): 5.0 * 3.6e6}
    assert [m.id for m in reading.meters] == ["dead", "ok"]


@pytest.mark.timeout(30)
def test_silent_meter_fails_within_its_timeout_and_healthy_meter_still_reads() -> None:
    with silent_server() as port_silent, modbus_server(
        {3059: encode(1.5, DT.FLOAT32), 3203: encode(42, DT.INT64)}
    ) as port:
        config = ModbusConfig(meters=[
            meter("silent", port_silent, "schneider-pm5xxx", timeout_s=0.5),
            meter("ok", port, "schneider-pm5xxx"),
        ])
        reading = ModbusProbe(config).read(NOW)
    # One error only: after the first read times out the probe stops asking the silent meter.
    [error] = reading.errors
    assert error.startswith(f"meter silent (127.0.0.1:{port_silent} unit {UNIT_ID}): no answer "
                            "reading holding register 3059 (float32) within 0.5 s")
    assert values(reading) == {("meter_power_watts", "ok"): 1500.0,
                               ("meter_energy_joules_total", "ok"): 42 * 3600.0}


def test_refused_register_is_reported_and_other_quantity_still_reads() -> None:
    """A meter that answers with a Modbus exception (address not served) is still alive."""
    with modbus_server({72: encode(9.0, DT.FLOAT32)}) as port:
        inline = {"name": "partial",
                  "power": {"address": 500, "kind": "holding", "type": "float32", "unit": "W"},
                  "energy": {"address": 72, "kind": "holding", "type": "float32", "unit": "kWh"}}
        reading = ModbusProbe(ModbusConfig(meters=[meter("m1", port, inline)])).read(NOW)
    [error] = reading.errors
    assert "meter refused reading holding register 500 (float32): exception code" in error
    assert values(reading) == {("meter_energy_joules_total", "m1"): 9.0 * 3.6e6}


@pytest.mark.parametrize("served", [math.nan, -5.0])
def test_implausible_value_is_rejected_with_a_reason(served: float) -> None:
    with modbus_server({}, {52: encode(served, DT.FLOAT32), 72: encode(1.0, DT.FLOAT32)}) as port:
        reading = ModbusProbe(ModbusConfig(meters=[meter("m1", port, "eastron-sdm630")])).read(NOW)
    [error] = reading.errors
    assert error.startswith(f"meter m1 (127.0.0.1:{port} unit {UNIT_ID}): meter_power_watts "
                            "from input register 52 (float32) rejected:")
    assert ("meter_power_watts", "m1") not in values(reading)
    assert ("meter_energy_joules_total", "m1") in values(reading)


def test_unknown_map_name_lists_the_shipped_maps() -> None:
    with pytest.raises(ValidationError) as exc:
        ModbusConfig(meters=[meter("m1", 502, "no-such-meter")])
    message = str(exc.value)
    assert "unknown register map 'no-such-meter'" in message
    for name in available_maps():
        assert name in message


def test_config_rejects_bad_input() -> None:
    with pytest.raises(ValidationError, match="appears more than once"):
        ModbusConfig(meters=[meter("m1", 502, "eastron-sdm630"), meter("m1", 503, "acrel-adw300")])
    with pytest.raises(ValidationError, match="power unit must be one of"):
        ModbusConfig(meters=[meter("m1", 502, {"name": "x", "power": {
            "address": 0, "kind": "holding", "type": "uint16", "unit": "kWh"}})])
    with pytest.raises(ValidationError, match="defines neither power nor energy"):
        ModbusConfig(meters=[meter("m1", 502, {"name": "x"})])
    with pytest.raises(ValidationError, match="runs past register 65535"):
        ModbusConfig(meters=[meter("m1", 502, {"name": "x", "energy": {
            "address": 65534, "kind": "holding", "type": "uint64", "unit": "Wh"}})])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ModbusConfig(meters=[meter("m1", 502, "eastron-sdm630", baud=9600)])


def test_shipped_maps_cite_their_sources() -> None:
    for name in available_maps():
        register_map = load_map(name)
        assert register_map.name == name
        assert register_map.sources, f"{name} cites no source"
