"""Facility and IT power meters read over Modbus TCP (pymodbus).

Each configured meter is read once per cycle: the probe connects, reads the total active power
and cumulative active energy registers its register map names, converts them to W and J, and
closes the connection (meter gateways often allow only a few TCP clients, so none is held
between cycles). Meters are read in parallel, so one dead or slow meter costs the cycle at most
its own timeout, not the sum of all of them. A meter that fails is reported in ``errors`` with
its id, address and the cause; the others still read.

A failure that usually comes from one misconfigured key says which: a value the catalogue
refuses (negative, implausibly large) is decoded again with the other word order and shown if
that one is plausible; a server that accepts the TCP connection but does not answer the request,
or answers that the unit is unavailable, is most often being asked for the wrong ``unit_id``.

pymodbus is imported only when a meter is actually read, so the agent starts without it when
no Modbus probe is configured.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.probe import Point, Reading
from agents.probes.registermaps import Register, RegisterMap, load_map
from jinsuan.contract.metrics import CATALOGUE
from jinsuan.contract.wire import Ident, MeterInfo, MeterPoint, MeterRole

if TYPE_CHECKING:
    from pymodbus.client import ModbusTcpClient

POWER_METRIC = "meter_power_watts"
ENERGY_METRIC = "meter_energy_joules_total"
_MAX_PARALLEL = 8

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7) and what to check.
# 04 "server device failure" is what pymodbus's server (and some gateways) answer for a unit id
# they do not serve; 0A / 0B are a gateway saying it has no path to, or no answer from, the unit.
_UNIT_ID_HINT = (
    "the server accepted the TCP connection, so host and port are right: check unit_id, the "
    "RS-485 address a gateway passes the request on to (a meter answers only its own)"
)
_MAP_HINT = "check address, kind and type in the register map against the meter's manual"
_EXCEPTION_HINTS = {
    1: _MAP_HINT, 2: _MAP_HINT, 3: _MAP_HINT,
    4: _UNIT_ID_HINT, 10: _UNIT_ID_HINT, 11: _UNIT_ID_HINT,
}


class ModbusMeterConfig(BaseModel):
    """One meter reachable over Modbus TCP (directly or through an RS-485 gateway)."""

    model_config = ConfigDict(extra="forbid")

    id: Ident = Field(description="Meter id; the device name of its series on the wire.")
    host: str = Field(min_length=1, description="IP address or host name of the meter/gateway.")
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(
        default=1, ge=0, le=255, description="Modbus unit (slave) id; behind a gateway, the "
        "RS-485 address of the meter."
    )
    map: RegisterMap = Field(
        description="Name of a shipped register map (e.g. 'eastron-sdm630') or an inline map."
    )
    role: MeterRole = Field(description="facility: total site draw; it: IT equipment energy.")
    measures: MeterPoint = Field(description="Where the meter sits in the power chain.")
    racks: list[Ident] = Field(default_factory=list, description="Racks this meter feeds.")
    timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="Bound on connecting and on each register read."
    )

    @field_validator("map", mode="before")
    @classmethod
    def _load_named_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            return load_map(value)
        return value


class ModbusConfig(BaseModel):
    """The ``[probes.modbus]`` section: the meters one Modbus probe reads."""

    model_config = ConfigDict(extra="forbid")

    meters: list[ModbusMeterConfig] = Field(min_length=1)

    @field_validator("meters")
    @classmethod
    def _unique_ids(cls, meters: list[ModbusMeterConfig]) -> list[ModbusMeterConfig]:
        seen: set[str] = set()
        for meter in meters:
            if meter.id in seen:
                raise ValueError(f"meter id {meter.id!r} appears more than once")
            seen.add(meter.id)
        return meters


class MeterReadError(Exception):
    """A register could not be read; the message names the meter, its address and the cause."""


class MeterSilentError(MeterReadError):
    """The meter stopped answering: further reads this cycle would only wait out the timeout."""


def decode(registers: list[int], spec: Register) -> float:
    """Decode raw 16-bit registers per ``spec`` and convert to W or J."""
    from pymodbus.client import ModbusTcpClient

    if spec.byte_order == "little":
        registers = [((r & 0xFF) << 8) | (r >> 8) for r in registers]
    datatype = ModbusTcpClient.DATATYPE[spec.type.upper()]
    raw = ModbusTcpClient.convert_from_registers(registers, datatype, word_order=spec.word_order)
    return spec.to_base(float(raw))  # type: ignore[arg-type]


class ModbusProbe:
    """Reads every configured meter once per cycle."""

    name = "modbus"

    def __init__(self, config: ModbusConfig) -> None:
        self.config = config

    def read(self, now: datetime) -> Reading:
        reading = Reading()
        meters = self.config.meters
        with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(meters))) as pool:
            results = list(pool.map(self._read_meter, meters))
        for meter, (points, errors) in zip(meters, results, strict=True):
            reading.meters.append(
                MeterInfo(id=meter.id, role=meter.role, measures=meter.measures, racks=meter.racks)
            )
            reading.points.extend(points)
            reading.errors.extend(errors)
        return reading

    def _read_meter(self, meter: ModbusMeterConfig) -> tuple[list[Point], list[str]]:
        from pymodbus.client import ModbusTcpClient

        where = f"meter {meter.id} ({meter.host}:{meter.port} unit {meter.unit_id})"
        client = ModbusTcpClient(meter.host, port=meter.port, timeout=meter.timeout_s, retries=0)
        points: list[Point] = []
        errors: list[str] = []
        try:
            if not client.connect():
                return [], [
                    f"{where}: cannot connect (refused, unreachable or no answer within "
                    f"{meter.timeout_s:g} s)"
                ]
            quantities = ((POWER_METRIC, meter.map.power), (ENERGY_METRIC, meter.map.energy))
            for metric, spec in quantities:
                if spec is None:
                    continue
                try:
                    registers = _read_registers(client, meter, spec, where)
                except MeterSilentError as exc:
                    errors.append(str(exc))
                    break
                except MeterReadError as exc:
                    errors.append(str(exc))
                    continue
                value = decode(registers, spec)
                problem = CATALOGUE[metric].check(value)
                if problem is not None:
                    errors.append(f"{where}: {metric} from {_describe(spec)} rejected: {problem}"
                                  f" ({_decoding_hint(registers, spec, metric)})")
                    continue
                points.append(Point(metric, meter.id, value))
        finally:
            client.close()
        return points, errors


def _describe(spec: Register) -> str:
    return f"{spec.kind} register {spec.address} ({spec.type})"


def _decoding_hint(registers: list[int], spec: Register, metric: str) -> str:
    """What to check in the register map when ``registers`` decoded to an implausible value.

    A multi-register value read in the wrong word order comes out negative or absurdly large
    far more often than plausible, so the other order is tried: if it gives a value the
    catalogue accepts, the operator is shown it to compare with the meter's display.
    """
    if spec.count == 1:
        return "check type, byte_order, scale and unit in the register map"
    other = "little" if spec.word_order == "big" else "big"
    alternative = decode(registers, spec.model_copy(update={"word_order": other}))
    if CATALOGUE[metric].check(alternative) is not None:
        return "check word_order, type, scale and unit in the register map"
    unit = CATALOGUE[metric].unit
    return (f'with word_order = "{other}" the same registers read {alternative:g} {unit}; if '
            "that matches the meter's display, the register map's word_order is wrong")


def _read_registers(
    client: ModbusTcpClient, meter: ModbusMeterConfig, spec: Register, where: str
) -> list[int]:
    from pymodbus.exceptions import ModbusException

    read = client.read_holding_registers if spec.kind == "holding" else client.read_input_registers
    try:
        response = read(spec.address, count=spec.count, device_id=meter.unit_id)
    except ModbusException as exc:
        raise MeterSilentError(
            f"{where}: no answer reading {_describe(spec)} within {meter.timeout_s:g} s: {exc}"
            f" ({_UNIT_ID_HINT})"
        ) from exc
    if response.isError():
        code = getattr(response, "exception_code", None)
        hint = _EXCEPTION_HINTS.get(code)
        raise MeterReadError(
            f"{where}: meter refused reading {_describe(spec)}: exception code "
            f"{'?' if code is None else code}" + (f" ({hint})" if hint else "")
        )
    if len(response.registers) != spec.count:
        raise MeterReadError(
            f"{where}: {_describe(spec)} returned {len(response.registers)} registers, "
            f"expected {spec.count}"
        )
    return list(response.registers)
