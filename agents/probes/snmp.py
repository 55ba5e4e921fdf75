"""PDUs and UPSs over SNMP (v2c and v3): power and energy from standard or vendor MIB OIDs.

Which OIDs to read is data, not code: each device lists quantities (an OID, whether it is power
or energy, and the unit its integer counts in), and may name presets below for the common MIBs.
A device's readings become one meter (``sum = true``: every power OID summed, every energy OID
summed, e.g. the three output lines of a UPS) or one meter per channel (``sum = false``: meter id
``<device>/<channel>``, e.g. one per PDU outlet).

pysnmp (7.x) is asyncio-only while ``read`` is called from the agent's worker threads, so the
probe owns a private event loop and one SNMP engine per device (engines keep a device's v3
engine id and time between cycles; one per device also keeps two devices that share a v3 user
name with different keys apart). ``close()`` releases them. All devices are read concurrently,
each bounded by its own timeout and retries, so a dead device costs one timeout, not one each.

Every engine resolves its request OIDs through one MIB view shared by the whole process (see
``shared_mib_view``): with pysmi installed, pysnmp would otherwise build a MIB compiler for each
engine on its first request, about 0.7 s of CPU each, and a dozen devices would spend a whole
check's deadline compiling instead of reading.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from agents.probe import Point, Reading
from jinsuan.contract.metrics import CATALOGUE
from jinsuan.contract.wire import Ident, MeterInfo, MeterPoint, MeterRole

Quantity = Literal["power", "energy"]

POWER_METRIC = "meter_power_watts"
ENERGY_METRIC = "meter_energy_joules_total"

# What one count of a register is worth in base units (W for power, J for energy).
POWER_UNITS: dict[str, float] = {"W": 1.0, "kW": 1e3, "0.1 kW": 1e2, "0.01 kW": 10.0}
ENERGY_UNITS: dict[str, float] = {
    "J": 1.0,
    "Wh": 3600.0,
    "kWh": 3.6e6,
    "0.1 kWh": 3.6e5,
    "0.01 kWh": 3.6e4,
}
Unit = Literal["W", "kW", "0.1 kW", "0.01 kW", "J", "Wh", "kWh", "0.1 kWh", "0.01 kWh"]

_TIMER_SLACK_S = 1.0
_SAFETY_MARGIN_S = 5.0

_OID = re.compile(r"^\.?(\d+(\.\d+)+)$")


@dataclass(frozen=True, slots=True)
class PresetColumn:
    """One column of a MIB table: the row index is appended to ``oid`` to read it."""

    quantity: Quantity
    oid: str
    unit: Unit


@dataclass(frozen=True, slots=True)
class Preset:
    description: str
    channel: str  # channel name for row ``index``: ``channel.format(index=index)``
    columns: tuple[PresetColumn, ...]


# OIDs checked against the MIB texts: UPS-MIB is RFC 1628 (upsMIB = mib-2 33); PowerNet-MIB is
# APC's (v4.5.2 read; rPDU2 = enterprises.318.1.1.26).
PRESETS: dict[str, Preset] = {
    # RFC 1628 upsOutputTable (upsOutput 4), upsOutputEntry column 4 upsOutputPower:
    # "The present output true power", UNITS "Watts", one row per output line
    # (upsOutputNumLines rows). The standard MIB has no energy counter.
    "ups_mib_output": Preset(
        "UPS-MIB (RFC 1628) upsOutputPower per output line",
        "L{index}",
        (PresetColumn("power", "1.3.6.1.2.1.33.1.4.4.1.4", "W"),),
    ),
    # PowerNet-MIB rPDU2DeviceStatusTable (rPDU2Device 3): column 5 rPDU2DeviceStatusPower "in
    # hundredths of kilowatts"; column 9 rPDU2DeviceStatusEnergy "in tenths of kilowatt-hours"
    # (user resettable: a reset reads as a counter reset). Row = rPDU2DeviceStatusIndex
    # (1 for a single PDU, 1..n for a daisy chain).
    "apc_rpdu2_device": Preset(
        "APC PowerNet rPDU2 whole-PDU power and energy",
        "pdu{index}",
        (
            PresetColumn("power", "1.3.6.1.4.1.318.1.1.26.4.3.1.5", "0.01 kW"),
            PresetColumn("energy", "1.3.6.1.4.1.318.1.1.26.4.3.1.9", "0.1 kWh"),
        ),
    ),
    # PowerNet-MIB rPDU2PhaseStatusTable (rPDU2Phase 3): column 7 rPDU2PhaseStatusPower
    # "in hundredths of kilowatts (kW)". No per-phase energy in the MIB.
    "apc_rpdu2_phase": Preset(
        "APC PowerNet rPDU2 power per input phase",
        "phase{index}",
        (PresetColumn("power", "1.3.6.1.4.1.318.1.1.26.6.3.1.7", "0.01 kW"),),
    ),
    # PowerNet-MIB rPDU2OutletMeteredStatusTable (rPDU2OutletMetered 3), metered outlets only:
    # column 7 rPDU2OutletMeteredStatusPower (the MIB text gives no unit; APC's web UI and the
    # common pollers read it as watts) and column 11 rPDU2OutletMeteredStatusEnergy "in tenths of
    # kilowatt-hours".
    "apc_rpdu2_outlet": Preset(
        "APC PowerNet rPDU2 metered-outlet power and energy",
        "outlet{index}",
        (
            PresetColumn("power", "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7", "W"),
            PresetColumn("energy", "1.3.6.1.4.1.318.1.1.26.9.4.3.1.11", "0.1 kWh"),
        ),
    ),
}

PresetName = Literal["ups_mib_output", "apc_rpdu2_device", "apc_rpdu2_phase", "apc_rpdu2_outlet"]


def _oid(value: str) -> str:
    match = _OID.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a numeric OID such as 1.3.6.1.2.1.33.1.4.4.1.4.1")
    return match.group(1)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SnmpQuantity(_Config):
    """One OID to read, what it measures and what one count of it is worth."""

    oid: str = Field(description="Numeric OID of the instance, e.g. 1.3.6.1.2.1.33.1.4.4.1.4.1.")
    quantity: Quantity = Field(description="power (a gauge) or energy (a cumulative register).")
    unit: Unit = Field(description="What one count is: W, kW, 0.1 kW, 0.01 kW, J, Wh, kWh, ...")
    scale: float = Field(
        default=1.0,
        gt=0,
        description="Extra multiplier for a step the unit list lacks (0.001 with Wh for mWh).",
    )
    channel: Ident | None = Field(
        default=None,
        description="Outlet, phase or line name; with sum = false the meter is <device>/<channel>.",
    )

    @field_validator("oid")
    @classmethod
    def _numeric_oid(cls, value: str) -> str:
        return _oid(value)

    @model_validator(mode="after")
    def _unit_fits_quantity(self) -> SnmpQuantity:
        units = POWER_UNITS if self.quantity == "power" else ENERGY_UNITS
        if self.unit not in units:
            raise ValueError(
                f"unit {self.unit!r} is not a {self.quantity} unit; use one of {sorted(units)}"
            )
        return self

    @property
    def factor(self) -> float:
        """Multiply a raw count by this to get W (power) or J (energy)."""
        units = POWER_UNITS if self.quantity == "power" else ENERGY_UNITS
        return units[self.unit] * self.scale


class SnmpPresetUse(_Config):
    """Read a preset's columns at the given table rows (lines, phases, outlets, PDUs)."""

    name: PresetName
    indices: list[Annotated[int, Field(ge=0)]] = Field(default=[1], min_length=1)

    def quantities(self) -> list[SnmpQuantity]:
        preset = PRESETS[self.name]
        return [
            SnmpQuantity(
                oid=f"{column.oid}.{index}",
                quantity=column.quantity,
                unit=column.unit,
                channel=preset.channel.format(index=index),
            )
            for index in self.indices
            for column in preset.columns
        ]


AuthProtocol = Literal["MD5", "SHA", "SHA-256"]
# AES-256 is draft-blumenthal-aes-usm key extension (net-snmp's AES-256); AES-256-C is the Reeder
# key extension Cisco and some PDU vendors use. A mismatch shows up as a decryption failure.
PrivProtocol = Literal["DES", "AES", "AES-256", "AES-256-C"]


class SnmpDeviceConfig(_Config):
    """One SNMP agent (a UPS network card, a PDU) and the meters read from it."""

    id: Ident = Field(description="Meter id, or the prefix of per-channel meter ids.")
    host: str = Field(min_length=1, description="Address or name of the SNMP agent.")
    port: int = Field(default=161, ge=1, le=65535)
    version: Literal["v2c", "v3"] = "v2c"
    community: SecretStr | None = Field(default=None, description="v2c read community.")
    user: str | None = Field(default=None, min_length=1, description="v3 USM user name.")
    security_level: Literal["noAuthNoPriv", "authNoPriv", "authPriv"] = "authPriv"
    auth_protocol: AuthProtocol = "SHA"
    auth_key: SecretStr | None = Field(default=None, description="v3 authentication passphrase.")
    priv_protocol: PrivProtocol = "AES"
    priv_key: SecretStr | None = Field(default=None, description="v3 privacy passphrase.")
    context: str = Field(default="", description="v3 context name (most agents use none).")
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="Per request attempt.")
    retries: int = Field(default=1, ge=0, le=5)
    max_oids_per_request: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Split larger reads; lower it if the agent says tooBig.",
    )
    role: MeterRole
    measures: MeterPoint
    racks: list[Ident] = Field(default_factory=list, description="Racks this device feeds.")
    sum: bool = Field(
        default=True,
        description=(
            "true: one meter summing all OIDs (list either a total or its parts, not both); "
            "false: one meter per channel."
        ),
    )
    presets: list[SnmpPresetUse] = Field(default_factory=list)
    quantities: list[SnmpQuantity] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> SnmpDeviceConfig:
        if self.version == "v2c":
            if self.community is None:
                raise ValueError("version v2c needs community")
            if any(v for v in (self.user, self.auth_key, self.priv_key, self.context)):
                raise ValueError("user, auth_key, priv_key and context are for version v3 only")
        else:
            if self.user is None:
                raise ValueError("version v3 needs user")
            if self.community is not None:
                raise ValueError("community is for version v2c only")
            needs_auth = self.security_level in ("authNoPriv", "authPriv")
            needs_priv = self.security_level == "authPriv"
            for name, key, needed in (
                ("auth_key", self.auth_key, needs_auth),
                ("priv_key", self.priv_key, needs_priv),
            ):
                if needed and key is None:
                    raise ValueError(f"security_level {self.security_level} needs {name}")
                if not needed and key is not None:
                    raise ValueError(f"{name} is unused at security_level {self.security_level}")
                # RFC 3414 section 11.2: passphrases shorter than 8 octets are refused.
                if key is not None and len(key.get_secret_value()) < 8:
                    raise ValueError(f"{name} must be at least 8 characters (RFC 3414)")
        all_quantities = self.all_quantities()
        if not all_quantities:
            raise ValueError("list at least one entry in quantities or presets")
        oids = [q.oid for q in all_quantities]
        if duplicates := sorted({oid for oid in oids if oids.count(oid) > 1}):
            raise ValueError(f"OID {duplicates[0]} is listed twice: it would be counted twice")
        if not self.sum:
            seen: set[tuple[str, str]] = set()
            for q in all_quantities:
                if q.channel is None:
                    raise ValueError(f"with sum = false, quantity {q.oid} needs a channel")
                if (q.channel, q.quantity) in seen:
                    raise ValueError(
                        f"with sum = false, channel {q.channel!r} has two {q.quantity} OIDs"
                    )
                seen.add((q.channel, q.quantity))
        plan_meters(self)  # the meter ids must be valid wire identifiers
        return self

    def all_quantities(self) -> list[SnmpQuantity]:
        expanded = [q for use in self.presets for q in use.quantities()]
        return expanded + list(self.quantities)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SnmpProbeConfig(_Config):
    """One ``[[probes.snmp]]`` table: the SNMP devices one probe reads each cycle."""

    name: str = Field(default="snmp", min_length=1)
    devices: list[SnmpDeviceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_meters(self) -> SnmpProbeConfig:
        seen: set[str] = set()
        for device in self.devices:
            for meter in plan_meters(device):
                if meter.info.id in seen:
                    raise ValueError(f"meter id {meter.info.id!r} is used twice")
                seen.add(meter.info.id)
        return self


@dataclass(frozen=True, slots=True)
class MeterPlan:
    """A meter and the OIDs that make it up: each quantity is the sum of its OIDs."""

    info: MeterInfo
    sources: tuple[SnmpQuantity, ...]


def plan_meters(device: SnmpDeviceConfig) -> list[MeterPlan]:
    """The meters a device yields: one summing every OID, or one per channel."""
    quantities = device.all_quantities()

    def meter(meter_id: str, sources: Iterable[SnmpQuantity]) -> MeterPlan:
        info = MeterInfo(
            id=meter_id, role=device.role, measures=device.measures, racks=device.racks
        )
        return MeterPlan(info, tuple(sources))

    if device.sum:
        return [meter(device.id, quantities)]
    channels = dict.fromkeys(q.channel for q in quantities)
    return [
        meter(f"{device.id}/{channel}", (q for q in quantities if q.channel == channel))
        for channel in channels
    ]


class SnmpUnavailable(RuntimeError):
    """pysnmp is not installed: raised at construction, so the agent fails at start-up."""


def _load_pysnmp() -> ModuleType:
    try:
        from pysnmp.hlapi.v3arch import asyncio as hlapi
    except ImportError as exc:
        raise SnmpUnavailable(
            "the snmp probe needs the pysnmp library (pip install 'pysnmp>=7.1'), "
            f"which could not be imported: {exc}"
        ) from exc
    return hlapi


_MIB_VIEW_LOCK = threading.Lock()
_mib_view: Any = None  # the process's one MIB view; see shared_mib_view


def shared_mib_view(hl: ModuleType) -> Any:
    """The MIB view every SNMP engine of this process resolves its request OIDs with.

    pysnmp keeps one view per engine (``engine.cache["mibViewController"]``) and, when pysmi is
    installed, builds a MIB compiler into it on the engine's first request: about 0.7 s of CPU,
    on the probe's event loop, so twelve devices spent more than a check's 8 s deadline before
    any of them was asked. The first call here pays that once, outside any read, and loads the
    base MIB the resolution needs; our OIDs are numeric, so afterwards requests only look
    things up in the view, which is safe from several probe threads at once.
    """
    global _mib_view
    with _MIB_VIEW_LOCK:
        if _mib_view is None:
            from pysnmp.smi.builder import MibBuilder
            from pysnmp.smi.view import MibViewController

            mib_view = MibViewController(MibBuilder())
            hl.ObjectType(hl.ObjectIdentity("1.3.6.1")).resolve_with_mib(mib_view)
            _mib_view = mib_view
        return _mib_view


class DeviceError(Exception):
    """A device-level failure, already worded for the operator."""


@dataclass(slots=True)
class _Device:
    config: SnmpDeviceConfig
    meters: list[MeterPlan]
    oids: list[str]
    engine: Any = None  # pysnmp SnmpEngine, made inside the probe's loop on first use


class SnmpProbe:
    """Reads every configured SNMP device once per ``read``; see the module docstring."""

    def __init__(self, config: SnmpProbeConfig) -> None:
        self.name = config.name
        self._hl = _load_pysnmp()
        self._mib_view = shared_mib_view(self._hl)
        self._devices = []
        for device in config.devices:
            meters = plan_meters(device)
            oids = list(dict.fromkeys(q.oid for m in meters for q in m.sources))
            self._devices.append(_Device(device, meters, oids))
        self._loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop()
        self._lock = threading.Lock()

    def read(self, now: datetime) -> Reading:
        with self._lock:
            if self._loop is None:
                raise RuntimeError(f"probe {self.name} is closed")
            results = self._loop.run_until_complete(self._read_all())
        reading = Reading()
        for device, outcome in zip(self._devices, results, strict=True):
            reading.meters.extend(m.info for m in device.meters)
            if isinstance(outcome, DeviceError):
                reading.errors.append(str(outcome))
                continue
            points, errors = _points(device, outcome)
            reading.points.extend(points)
            reading.errors.extend(errors)
        return reading

    def close(self) -> None:
        """Close every SNMP engine's sockets and the private event loop. Idempotent."""
        with self._lock:
            loop, self._loop = self._loop, None
            if loop is None:
                return
            try:
                loop.run_until_complete(self._close_engines())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def __enter__(self) -> SnmpProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _close_engines(self) -> None:
        for device in self._devices:
            if device.engine is not None:
                device.engine.close_dispatcher()
                device.engine = None
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _read_all(self) -> list[dict[str, object] | DeviceError]:
        for device in self._devices:
            if device.engine is None:  # made here, outside the timed reads: it loads MIB modules
                device.engine = self._hl.SnmpEngine()
                device.engine.cache["mibViewController"] = self._mib_view
        return await asyncio.gather(*(self._read_device(d) for d in self._devices))

    async def _read_device(self, device: _Device) -> dict[str, object] | DeviceError:
        cfg = device.config
        chunks = [
            device.oids[i : i + cfg.max_oids_per_request]
            for i in range(0, len(device.oids), cfg.max_oids_per_request)
        ]
        # pysnmp enforces timeout x attempts per request, checked on a 0.5 s timer; the outer
        # bound is only a safety net for what pysnmp does not bound (name resolution, a stuck
        # dispatcher), so it is generous and should never be what ends a plain dead device.
        attempts = cfg.retries + 1
        bound = len(chunks) * (cfg.timeout_s * attempts + _TIMER_SLACK_S) + _SAFETY_MARGIN_S
        try:
            return await asyncio.wait_for(self._get(device, chunks), bound)
        except DeviceError as exc:
            return exc
        except TimeoutError:
            return DeviceError(f"{_where(cfg)}: no complete answer within {bound:g} s")
        except Exception as exc:  # a library or OS failure must not silence the other devices
            return DeviceError(f"{_where(cfg)}: {type(exc).__name__}: {exc}")

    async def _get(self, device: _Device, chunks: list[list[str]]) -> dict[str, object]:
        hl, cfg = self._hl, device.config
        target_type = hl.Udp6TransportTarget if _is_ipv6(cfg.host) else hl.UdpTransportTarget
        try:
            target = await target_type.create(
                (cfg.host, cfg.port), timeout=cfg.timeout_s, retries=cfg.retries
            )
        except Exception as exc:
            raise DeviceError(f"{_where(cfg)}: cannot resolve host: {exc}") from exc
        auth = _auth(hl, cfg)
        context = (
            hl.ContextData(contextName=cfg.context) if cfg.version == "v3" else hl.ContextData()
        )
        values: dict[str, object] = {}
        for chunk in chunks:
            error_indication, error_status, error_index, var_binds = await hl.get_cmd(
                device.engine,
                auth,
                target,
                context,
                *(hl.ObjectType(hl.ObjectIdentity(oid)) for oid in chunk),
                lookupMib=False,  # the values as the agent sent them; names are not needed
            )
            if error_indication:
                hint = _hint(error_indication, cfg)
                raise DeviceError(f"{_where(cfg)}: {error_indication}{hint}")
            if error_status:
                at = chunk[int(error_index) - 1] if 0 < int(error_index) <= len(chunk) else "?"
                status = error_status.prettyPrint()
                hint = " (lower max_oids_per_request)" if status == "tooBig" else ""
                raise DeviceError(f"{_where(cfg)}: agent answered {status} at {at}{hint}")
            for oid, (_, value) in zip(chunk, var_binds, strict=True):
                values[oid] = value
        return values


def _where(cfg: SnmpDeviceConfig) -> str:
    return f"snmp device {cfg.id} at {cfg.address}"


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _hint(error_indication: object, cfg: SnmpDeviceConfig) -> str:
    hints = {
        # An agent drops a v3 request it cannot decrypt or authenticate unanswered when it does
        # not send reports (net-snmp, for one, cannot parse a PDU decrypted with the wrong key),
        # so for v3 a timeout is as often the keys as the address.
        "RequestTimedOut": (
            " (check address and port; an agent that cannot decrypt or authenticate a v3 "
            "request may drop it unanswered: check priv_key and priv_protocol, then auth_key "
            "and auth_protocol, and user)"
            if cfg.version == "v3"
            else " (check address, port, community and the agent's ACL)"
        ),
        "WrongDigest": " (authentication failed: check auth_key and auth_protocol)",
        "DecryptionError": " (decryption failed: check priv_key and priv_protocol)",
        "UnknownUserName": " (the agent has no such v3 user)",
        "UnsupportedSecLevel": " (the agent's user does not support this security_level)",
    }
    return hints.get(type(error_indication).__name__, "")


def _auth(hl: ModuleType, cfg: SnmpDeviceConfig) -> Any:
    if cfg.version == "v2c":
        assert cfg.community is not None  # the config validator guarantees it
        return hl.CommunityData(cfg.community.get_secret_value(), mpModel=1)
    auth_protocols = {
        "MD5": hl.USM_AUTH_HMAC96_MD5,
        "SHA": hl.USM_AUTH_HMAC96_SHA,
        "SHA-256": hl.USM_AUTH_HMAC192_SHA256,
    }
    priv_protocols = {
        "DES": hl.USM_PRIV_CBC56_DES,
        "AES": hl.USM_PRIV_CFB128_AES,
        "AES-256": hl.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "AES-256-C": hl.USM_PRIV_CFB256_AES,
    }
    kwargs: dict[str, Any] = {}
    if cfg.auth_key is not None:
        kwargs["authKey"] = cfg.auth_key.get_secret_value()
        kwargs["authProtocol"] = auth_protocols[cfg.auth_protocol]
    if cfg.priv_key is not None:
        kwargs["privKey"] = cfg.priv_key.get_secret_value()
        kwargs["privProtocol"] = priv_protocols[cfg.priv_protocol]
    return hl.UsmUserData(cfg.user, **kwargs)


def _number(value: object) -> float:
    """A varbind's value as a number, or ValueError saying why it is not one."""
    from pyasn1.type import univ

    name = type(value).__name__
    if name in ("NoSuchObject", "NoSuchInstance", "EndOfMibView"):
        raise ValueError(f"the agent has no such OID ({name})")
    if isinstance(value, univ.Integer):
        return float(int(value))
    if isinstance(value, univ.OctetString):
        text = value.prettyPrint().strip()
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"string {text!r} is not a number") from None
    raise ValueError(f"a {name} is not a number")


def _points(device: _Device, values: dict[str, object]) -> tuple[list[Point], list[str]]:
    """Scale and sum each meter's OIDs; a bad OID drops only the meter quantity it feeds."""
    where = _where(device.config)
    points: list[Point] = []
    errors: list[str] = []
    for meter in device.meters:
        for quantity, metric in (("power", POWER_METRIC), ("energy", ENERGY_METRIC)):
            sources = [q for q in meter.sources if q.quantity == quantity]
            if not sources:
                continue
            total = 0.0
            problems: list[str] = []
            for q in sources:
                try:
                    raw = _number(values[q.oid])
                except ValueError as exc:
                    problems.append(f"{q.oid}: {exc}")
                    continue
                if raw < 0:
                    problems.append(
                        f"{q.oid}: negative reading {raw:g} (many PDUs answer -1 for a "
                        "quantity the model does not measure)"
                    )
                    continue
                total += raw * q.factor
            if not problems:
                problem = CATALOGUE[metric].check(total)
                if problem is not None:
                    problems.append(f"{problem} (check unit and scale)")
            if problems:
                errors.append(
                    f"{where}: {quantity} of meter {meter.info.id}: {'; '.join(problems)}"
                )
            else:
                points.append(Point(metric, meter.info.id, total))
    return points, errors
