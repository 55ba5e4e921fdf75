"""Huawei Ascend NPUs through ``npu-smi``, the management tool installed with the Ascend driver.

Each cycle runs ``npu-smi info`` once and parses its device table: two rows per chip, the first
``NPU Name | Health | Power(W) Temp(C) Hugepages``, the second ``Chip [Phy-ID] | Bus-Id |
AICore(%) Memory-Usage(MB) HBM-Usage(MB)``. Both the Atlas A2 layout (one chip per NPU, e.g.
910B3) and the A3 layout (two chips per NPU, power printed on the first chip only) are read.

The first time a chip is seen, two more commands describe it, and the answers are kept:
``npu-smi info -t board -i N -c C`` for the chip's die id, which becomes the accelerator's UUID
(without one, the UUID is built from the host name and PCI bus id, stable while the card stays in
its slot), and ``npu-smi info -t common -i N`` for the AI-core count and rated AI-core clock,
from which the platform estimates FP16 peak where its table has no figure.

Health (``OK``, ``Warning``, ``Alarm``, ``Critical``, ``UNKNOWN``): OK and Warning count as up; any
state but OK is reported in ``errors``. A failed or unparseable ``npu-smi info`` reports every chip
seen before with ``accelerator_up`` 0 and an error naming the command (and the line).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from agents.probe import Point, ProbeUnavailable, Reading
from jinsuan.contract.wire import AcceleratorInfo, Ident

VENDOR = "Huawei"
HEALTHY = frozenset({"OK", "WARNING"})
_HEALTH_STATES = frozenset({"OK", "WARNING", "ALARM", "CRITICAL", "UNKNOWN"})
_MISSING = frozenset({"-", "NA", "N/A"})
_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")
_FIRST_STATS = re.compile(r"^(?P<power>\S+)\s+(?P<temp>\S+)(?:\s+\d+\s*/\s*\d+)?$")
_SECOND_STATS = re.compile(
    r"^(?P<aicore>\S+)\s+(?P<mem_used>\d+)\s*/\s*(?P<mem_total>\d+)"
    r"(?:\s+(?P<hbm_used>\d+)\s*/\s*(?P<hbm_total>\d+))?$"
)
_DIE_WORD = re.compile(r"\b[0-9A-Fa-f]{8}\b")
_MIB = 2**20

CommandRunner = Callable[[Sequence[str], float], str]


class CommandFailed(Exception):
    """A command did not run, timed out or exited non-zero; the message names the command."""


class NpuSmiParseError(ValueError):
    """npu-smi printed something this parser does not understand; the message names the line."""


class AscendConfig(BaseModel):
    """The ``[probes.ascend]`` table of the agent's config file."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(default="npu-smi", description="npu-smi, by name on PATH or full path.")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Bound on each npu-smi run.")
    rack: Ident | None = Field(default=None, description="Rack id of the host these NPUs sit in.")
    identify_by_die_id: bool = Field(
        default=True,
        description="Use the chip's die id (npu-smi info -t board) as its UUID; if false, or "
        "when the board query shows none, the UUID is host name plus PCI bus id.",
    )
    host_id: Ident | None = Field(
        default=None, description="Host part of bus-id based UUIDs; default: the host name."
    )


@dataclass(frozen=True, slots=True)
class NpuRow:
    """One chip as the ``npu-smi info`` device table shows it, in base units."""

    npu: int
    chip: int
    phy_id: int | None
    name: str
    health: str
    bus_id: str
    power_watts: float | None
    temperature_celsius: float | None
    aicore_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    line: int


@dataclass(frozen=True, slots=True)
class ChipCommon:
    """Per-chip fields of ``npu-smi info -t common``."""

    aicore_count: int | None
    aicore_freq_mhz: float | None


@dataclass(slots=True)
class _Chip:
    uuid: str
    bus_id: str
    npu: int
    chip: int
    name: str
    memory_total_bytes: int | None = None
    aicore_count: int | None = None
    aicore_freq_mhz: float | None = None
    described: bool = False  # the common query answered


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _number(token: str, what: str, where: str) -> float | None:
    if token.upper() in _MISSING:
        return None
    try:
        return float(token)
    except ValueError:
        raise NpuSmiParseError(f"{where}: {what} {token!r} is not a number") from None


def parse_info(text: str, command: str = "npu-smi info") -> list[NpuRow]:
    """The device table of ``npu-smi info``; the process table after it is ignored."""
    lines = text.splitlines()
    header = next((n for n, line in enumerate(lines) if "Health" in _cells(line)), None)
    if header is None:
        first = next((line.strip() for line in lines if line.strip()), "")
        raise NpuSmiParseError(
            f"{command}: no device table (no line with a 'Health' column); output starts {first!r}"
        )
    body = next((n for n in range(header, len(lines)) if lines[n].startswith("+=")), len(lines))
    rows: list[NpuRow] = []
    first_row: tuple[int, list[str], int] | None = None  # line number, cells, health index
    for n in range(body + 1, len(lines)):
        line = lines[n].strip()
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if any(cell.startswith("Process id") for cell in cells):
            break
        where = f"{command}: line {n + 1}"
        if first_row is None:
            health = next(
                (i for i, c in enumerate(cells) if c.upper() in _HEALTH_STATES), None
            )
            if health is None:
                raise NpuSmiParseError(
                    f"{where}: expected an NPU row 'NPU Name | Health | Power Temp', got {line!r}"
                )
            first_row = (n + 1, cells, health)
            continue
        first_line, first_cells, health_at = first_row
        first_where = f"{command}: line {first_line}"
        rows.append(_chip_row(first_where, first_line, first_cells, health_at, where, cells))
        first_row = None
    if first_row is not None:
        raise NpuSmiParseError(f"{command}: line {first_row[0]}: NPU row without its chip row")
    return rows


def _chip_row(
    first_where: str,
    first_line: int,
    first_cells: list[str],
    health_at: int,
    where: str,
    cells: list[str],
) -> NpuRow:
    """One chip from its two table rows; ``*where`` name the command and line for errors."""
    ident = " ".join(first_cells[:health_at]).split()
    if len(ident) < 2 or not ident[0].isdigit():
        raise NpuSmiParseError(f"{first_where}: expected 'NPU-id name', got {ident!r}")
    stats = _FIRST_STATS.match(" ".join(first_cells[health_at + 1 :]))
    if stats is None:
        raise NpuSmiParseError(f"{first_where}: expected 'Power(W) Temp(C) Hugepages'")
    bus_at = next((i for i, c in enumerate(cells) if _BUS_ID.match(c)), None)
    if bus_at is None:
        raise NpuSmiParseError(f"{where}: expected the chip row with a Bus-Id, got {cells!r}")
    chip_ids = " ".join(cells[:bus_at]).split()
    if not all(token.isdigit() for token in chip_ids):
        raise NpuSmiParseError(f"{where}: expected 'Chip [Phy-ID]' numbers, got {chip_ids!r}")
    usage = _SECOND_STATS.match(" ".join(cells[bus_at + 1 :]))
    if usage is None:
        raise NpuSmiParseError(f"{where}: expected 'AICore(%) Memory-Usage(MB) HBM-Usage(MB)'")
    aicore = _number(usage["aicore"], "AICore(%)", where)
    if usage["hbm_total"] and int(usage["hbm_total"]) > 0:
        used, total = int(usage["hbm_used"]), int(usage["hbm_total"])
    else:  # no HBM (310 series): the chip's DDR is its device memory
        used, total = int(usage["mem_used"]), int(usage["mem_total"])
    return NpuRow(
        npu=int(ident[0]),
        chip=int(chip_ids[0]) if chip_ids else 0,
        phy_id=int(chip_ids[1]) if len(chip_ids) > 1 else None,
        name=" ".join(ident[1:]),
        health=first_cells[health_at],
        bus_id=cells[bus_at],
        power_watts=_number(stats["power"], "Power(W)", first_where),
        temperature_celsius=_number(stats["temp"], "Temp(C)", first_where),
        aicore_ratio=aicore / 100 if aicore is not None else None,
        memory_used_bytes=used * _MIB if total else None,
        memory_total_bytes=total * _MIB if total else None,
        line=first_line,
    )


def parse_key_values(text: str) -> list[dict[str, str]]:
    """``Key : value`` output (``-t board``, ``-t common``), split into blocks at blank lines."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, colon, value = line.partition(":")
        if colon:
            blocks[-1][key.strip()] = value.strip()
    return [block for block in blocks if block]


def parse_common(text: str) -> dict[int, ChipCommon]:
    """AI-core count and rated clock per chip id of ``npu-smi info -t common -i N``."""
    chips: dict[int, ChipCommon] = {}
    for block in parse_key_values(text):
        if "Aicore Count" not in block and "Aicore Freq(MHZ)" not in block:
            continue  # the NPU header block, or the MCU's
        chip = int(block.get("Chip ID", "0"))
        count = block.get("Aicore Count", "")
        freq = block.get("Aicore Freq(MHZ)", "")
        chips[chip] = ChipCommon(
            aicore_count=int(count) if count.isdigit() and int(count) > 0 else None,
            aicore_freq_mhz=float(freq) if freq.replace(".", "", 1).isdigit() else None,
        )
    return chips


def die_id(board_text: str) -> str | None:
    """The chip's die id from ``npu-smi info -t board -i N -c C`` as hex words, if it has one."""
    for block in parse_key_values(board_text):
        for key in ("VDie ID", "Die ID"):
            words = _DIE_WORD.findall(block.get(key, ""))
            if words and any(int(word, 16) for word in words):
                return "-".join(word.upper() for word in words)
    return None


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run ``argv``, return its stdout; kill its whole process group when ``timeout`` passes."""
    shown = " ".join(argv)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as err:
        raise CommandFailed(f"{shown}: cannot run: {err.strerror or err}") from err
    try:
        out, err_text = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CommandFailed(f"{shown}: no answer within {timeout:g} s; killed") from None
    if proc.returncode != 0:
        last = (err_text.strip() or out.strip()).splitlines()[-1:]
        detail = f": {last[0]}" if last else ""
        raise CommandFailed(f"{shown}: exit status {proc.returncode}{detail}")
    return out


def model_name(npu_smi_name: str) -> str:
    """npu-smi prints "910B3"; CANN and the FP16 table know it as "Ascend910B3"."""
    return npu_smi_name if npu_smi_name.lower().startswith("ascend") else f"Ascend{npu_smi_name}"


class AscendProbe:
    """Reads every Ascend NPU chip of this host; ``runner`` runs npu-smi (tests pass their own)."""

    name = "ascend"

    def __init__(self, config: AscendConfig, runner: CommandRunner | None = None) -> None:
        if runner is None:
            if shutil.which(config.command) is None:
                raise ProbeUnavailable(
                    f"ascend: {config.command!r} not found (PATH={os.environ.get('PATH', '')}); "
                    "npu-smi is installed with the Ascend NPU driver, usually as "
                    "/usr/local/sbin/npu-smi"
                )
            runner = run_command
        self._config = config
        self._run = runner
        self._host = config.host_id or socket.gethostname().split(".")[0]
        self._chips: dict[str, _Chip] = {}  # by PCI bus id

    def read(self, now: datetime) -> Reading:
        reading = Reading()
        command = f"{self._config.command} info"
        try:
            rows = parse_info(self._npu_smi("info"), command)
        except (CommandFailed, NpuSmiParseError) as err:
            reading.errors.append(f"ascend: {err}")
            for chip in self._chips.values():
                self._report_down(reading, chip, f"{command} failed")
            return reading
        if not rows:
            reading.errors.append(f"ascend: {command} lists no NPU")
        listed: set[str] = set()
        for row in rows:
            chip = self._chip(row, reading.errors)
            if chip is not None:
                listed.add(chip.bus_id)
                self._report(reading, chip, row)
        for bus_id, chip in self._chips.items():
            if bus_id not in listed:
                self._report_down(reading, chip, f"no longer listed by {command}")
        return reading

    # ----- identity and description, once per chip ----------------------------------------

    def _npu_smi(self, *args: str) -> str:
        return self._run([self._config.command, *args], self._config.timeout_s)

    def _chip(self, row: NpuRow, errors: list[str]) -> _Chip | None:
        chip = self._chips.get(row.bus_id)
        if chip is None:
            try:
                uuid = self._uuid(row)
            except CommandFailed as err:
                errors.append(f"ascend: {_where(row)}: cannot identify it ({err}); will retry")
                return None
            chip = self._chips[row.bus_id] = _Chip(uuid, row.bus_id, row.npu, row.chip, row.name)
        chip.npu, chip.chip, chip.name = row.npu, row.chip, row.name
        if not chip.described:
            self._describe(chip, row, errors)
        return chip

    def _uuid(self, row: NpuRow) -> str:
        if self._config.identify_by_die_id:
            board = self._npu_smi("info", "-t", "board", "-i", str(row.npu), "-c", str(row.chip))
            die = die_id(board)
            if die is not None:
                return f"ascend-{die}"
        return f"ascend-{self._host}-{row.bus_id}"

    def _describe(self, chip: _Chip, row: NpuRow, errors: list[str]) -> None:
        try:
            common = parse_common(self._npu_smi("info", "-t", "common", "-i", str(row.npu)))
        except (CommandFailed, ValueError) as err:
            errors.append(f"ascend: {_where(row)}: no AI-core count and clock ({err}); will retry")
            return
        found = common.get(row.chip)
        if found is not None:
            chip.aicore_count, chip.aicore_freq_mhz = found.aicore_count, found.aicore_freq_mhz
        chip.described = True

    # ----- points --------------------------------------------------------------------------

    def _report(self, reading: Reading, chip: _Chip, row: NpuRow) -> None:
        up = row.health.upper() in HEALTHY
        if row.health.upper() != "OK":
            reading.errors.append(f"ascend: {_where(row)} {chip.uuid}: health {row.health}")
        if row.memory_total_bytes is not None:
            chip.memory_total_bytes = row.memory_total_bytes
        reading.points.append(Point("accelerator_up", chip.uuid, 1.0 if up else 0.0))
        for metric, value in (
            ("accelerator_power_watts", row.power_watts),
            ("accelerator_temperature_celsius", row.temperature_celsius),
            ("accelerator_utilization_ratio", row.aicore_ratio),
            ("accelerator_memory_used_bytes", row.memory_used_bytes),
            ("accelerator_memory_total_bytes", row.memory_total_bytes),
        ):
            if value is not None:
                reading.points.append(Point(metric, chip.uuid, float(value)))
        reading.accelerators.append(self._info(chip))

    def _report_down(self, reading: Reading, chip: _Chip, cause: str) -> None:
        reading.points.append(Point("accelerator_up", chip.uuid, 0.0))
        reading.errors.append(
            f"ascend: NPU {chip.npu} chip {chip.chip} ({chip.name}, {chip.bus_id}) "
            f"{chip.uuid}: {cause}"
        )
        reading.accelerators.append(self._info(chip))

    def _info(self, chip: _Chip) -> AcceleratorInfo:
        return AcceleratorInfo(
            uuid=chip.uuid,
            model=model_name(chip.name),
            vendor=VENDOR,
            rack=self._config.rack,
            pci_bus_id=chip.bus_id,
            memory_total_bytes=chip.memory_total_bytes,
            sm_count=chip.aicore_count,
            sm_clock_max_mhz=chip.aicore_freq_mhz,
        )


def _where(row: NpuRow) -> str:
    return f"NPU {row.npu} chip {row.chip} ({row.name}, {row.bus_id})"
