"""NVIDIA accelerators through NVML (PyPI package ``nvidia-ml-py``, module ``pynvml``).

At start the probe enumerates the GPUs and reads what does not change: name, UUID, PCI bus id,
compute capability, maximum SM clock and SM count. Each cycle it reads power, the total energy
counter, utilisation, memory, temperature, SM clock, MIG mode and instances, uncorrected ECC
errors, and drains XID critical-error events without blocking.

Failure rules, as dcgm-exporter users expect them:

- a query NVML answers with ``NotSupported`` (or that the driver lacks) leaves its metric out;
  nothing is faked (a pre-Volta GPU has no energy counter, a MIG-mode GPU no utilisation);
- any other NVML error on a GPU (``GpuIsLost``, ``Unknown``...) reports that GPU with
  ``accelerator_up`` 0 and an error naming the GPU and the call; a GPU that leaves the
  enumeration is reported the same way under the UUID it had, never dropped silently;
- no NVML on the host (package missing, ``libnvidia-ml.so.1`` missing, driver not loaded) is a
  ``ProbeUnavailable`` at construction; the caller decides whether that disables the probe.

``accelerator_health_errors_total`` counts, since the probe started, the increase of the volatile
uncorrected ECC counter plus XID critical errors, except XIDs listed in ``ignored_xids``.

Run ``python -m agents.probes.nvml`` on a GPU host to print what the probe reads.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.probe import Point, ProbeUnavailable, Reading
from jinsuan.contract.accelerators import Fp16Peak, fp16_peak
from jinsuan.contract.wire import AcceleratorInfo, Ident

VENDOR = "NVIDIA"

# FP32 lanes per SM by compute capability (CUDA C++ Programming Guide, "Arithmetic Instructions"
# throughput table). NVML reports CUDA cores, not SMs, for a whole GPU: SMs = cores / lanes.
_FP32_LANES_PER_SM: dict[tuple[int, int], int] = {
    (6, 0): 64, (6, 1): 128, (6, 2): 128,
    (7, 0): 64, (7, 2): 64, (7, 5): 64,
    (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
    (9, 0): 128, (10, 0): 128, (12, 0): 128,
}  # fmt: skip



class NvmlConfig(BaseModel):
    """The ``[probes.nvml]`` table of the agent's config file."""

    model_config = ConfigDict(extra="forbid")

    rack: Ident | None = Field(default=None, description="Rack id of the host these GPUs sit in.")
    ignored_xids: list[int] = Field(
        default=[13, 31, 43, 45],
        description="XIDs not counted as health errors: NVIDIA's XID catalogue attributes these "
        "chiefly to user applications (engine exception, MMU fault, stopped channel, cleanup).",
    )
    max_events_per_cycle: int = Field(
        default=1000, gt=0, description="At most this many XID events are drained per GPU a cycle."
    )


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One MIG device (compute instance) of a GPU in MIG mode."""

    index: int
    uuid: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    sm_count: int | None
    memory_total_bytes: int | None


@dataclass(slots=True)
class GpuSample:
    """What one cycle read from one GPU; ``None`` means NVML does not support that query."""

    index: int
    uuid: str
    name: str | None
    pci_bus_id: str | None
    compute_capability: tuple[int, int] | None
    sm_count: int | None
    sm_clock_max_mhz: float | None
    up: bool = True
    error: str | None = None
    power_watts: float | None = None
    energy_joules: float | None = None
    utilization_gpu: float | None = None
    utilization_memory: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    sm_clock_mhz: float | None = None
    mig_enabled: bool | None = None
    mig: list[MigInstance] = field(default_factory=list)
    ecc_uncorrected_volatile: int | None = None
    xid_events: int = 0
    last_xid: int | None = None
    health_errors: int = 0


@dataclass(slots=True)
class _Gpu:
    """Per-GPU state kept between cycles."""

    index: int
    handle: Any
    uuid: str
    present: bool = True
    ready: bool = False  # static information read completely
    name: str | None = None
    pci_bus_id: str | None = None
    compute_capability: tuple[int, int] | None = None
    sm_count: int | None = None
    sm_clock_max_mhz: float | None = None
    memory_total_bytes: int | None = None  # last value read, for the inventory
    memory_v2: bool = True  # the driver answers nvmlDeviceGetMemoryInfo_v2
    event_set: Any = None
    ecc_last: int | None = None
    xid_events: int = 0
    last_xid: int | None = None
    health_errors: int = 0


class _CallFailed(Exception):
    """An NVML call failed with an error other than "not supported"."""


def sm_count_from_cores(cuda_cores: int, compute_capability: tuple[int, int]) -> int | None:
    """SMs of a whole GPU from NVML's CUDA core count; None for an architecture not in the table."""
    lanes = _FP32_LANES_PER_SM.get(compute_capability)
    if lanes is None or cuda_cores <= 0 or cuda_cores % lanes:
        return None
    return cuda_cores // lanes


def _import_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise ProbeUnavailable(
            "nvml: the Python package nvidia-ml-py (module pynvml) is not installed; "
            "install jinsuan[agent] or remove the nvml probe from the config"
        ) from err


class NvmlProbe:
    """Reads every NVIDIA GPU of this host; ``nvml`` is the ``pynvml`` module or a stand-in."""

    name = "nvml"

    def __init__(self, config: NvmlConfig, nvml: Any = None) -> None:
        self._config = config
        self._nvml = nvml if nvml is not None else _import_pynvml()
        nv = self._nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as err:
            raise ProbeUnavailable(
                f"nvml: nvmlInit failed: {err}. The nvml probe needs NVML "
                "(libnvidia-ml.so.1, installed with the NVIDIA driver) and a loaded driver"
            ) from err
        self._open = True
        self._not_supported = (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound)
        self._ignored_xids = frozenset(config.ignored_xids)
        self._gpus: dict[str, _Gpu] = {}
        self._count: int | None = None
        self._enumeration_errors: list[str] = []
        self._enumerate()

    # ----- public --------------------------------------------------------------------------

    def read(self, now: datetime) -> Reading:
        reading = Reading()
        for sample in self.sample():
            self._add(reading, sample)
        reading.errors[:0] = self._enumeration_errors
        return reading

    def sample(self) -> list[GpuSample]:
        """Read every GPU once and return the details (``read`` turns them into points)."""
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as err:
            cause = f"nvmlDeviceGetCount: {err}"
            return [self._down(gpu, cause) for gpu in self._gpus.values()]
        if count != self._count:
            self._enumerate()
        samples = []
        for gpu in self._gpus.values():
            if not gpu.present:
                samples.append(self._down(gpu, "no longer enumerated by NVML"))
                continue
            try:
                if not gpu.ready:
                    self._load_static(gpu)
                samples.append(self._sample(gpu))
            except _CallFailed as failure:
                samples.append(self._down(gpu, str(failure)))
        return samples

    @property
    def enumeration_errors(self) -> list[str]:
        """GPUs NVML counted but the probe could not identify (no UUID to report them under)."""
        return list(self._enumeration_errors)

    def driver_version(self) -> str | None:
        try:
            return str(self._call("nvmlSystemGetDriverVersion"))
        except _CallFailed:
            return None

    def close(self) -> None:
        """Free the event sets and shut NVML down; the probe reads nothing afterwards."""
        if not self._open:
            return
        self._open = False
        nv = self._nvml
        for gpu in self._gpus.values():
            if gpu.event_set is not None:
                # A lost GPU's set may refuse to be freed; shutdown releases it anyway.
                with contextlib.suppress(nv.NVMLError):
                    nv.nvmlEventSetFree(gpu.event_set)
                gpu.event_set = None
        nv.nvmlShutdown()

    # ----- enumeration and static information ----------------------------------------------

    def _enumerate(self) -> None:
        nv = self._nvml
        self._enumeration_errors = []
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as err:
            self._enumeration_errors.append(f"nvml: nvmlDeviceGetCount failed: {err}")
            return
        seen: set[str] = set()
        for index in range(count):
            try:
                handle = self._call("nvmlDeviceGetHandleByIndex", index)
                uuid = str(self._call("nvmlDeviceGetUUID", handle))
            except _CallFailed as failure:
                self._enumeration_errors.append(f"nvml: GPU index {index}: {failure}")
                continue
            seen.add(uuid)
            gpu = self._gpus.get(uuid)
            if gpu is None:
                gpu = self._gpus[uuid] = _Gpu(index=index, handle=handle, uuid=uuid)
            gpu.index, gpu.handle, gpu.present = index, handle, True
            with contextlib.suppress(_CallFailed):  # reported by the next sample, which retries
                self._load_static(gpu)
        for uuid, gpu in self._gpus.items():
            gpu.present = uuid in seen
        self._count = count

    def _load_static(self, gpu: _Gpu) -> None:
        nv = self._nvml
        h = gpu.handle
        gpu.name = str(self._call("nvmlDeviceGetName", h))
        pci = self._optional("nvmlDeviceGetPciInfo", h)
        gpu.pci_bus_id = _text(pci.busId) if pci is not None else None
        cc = self._optional("nvmlDeviceGetCudaComputeCapability", h)
        gpu.compute_capability = (int(cc[0]), int(cc[1])) if cc is not None else None
        max_clock = self._optional("nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_SM)
        gpu.sm_clock_max_mhz = float(max_clock) if max_clock else None
        cores = self._optional("nvmlDeviceGetNumGpuCores", h)
        if cores is not None and gpu.compute_capability is not None:
            gpu.sm_count = sm_count_from_cores(int(cores), gpu.compute_capability)
        if gpu.event_set is None:
            gpu.event_set = self._xid_event_set(h)
        gpu.ready = True

    def _xid_event_set(self, handle: Any) -> Any:
        nv = self._nvml
        event_set = self._call("nvmlEventSetCreate")
        try:
            nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, event_set)
        except nv.NVMLError as err:
            nv.nvmlEventSetFree(event_set)
            if isinstance(err, self._not_supported):
                return None
            raise _CallFailed(f"nvmlDeviceRegisterEvents: {err}") from err
        return event_set

    # ----- one cycle -----------------------------------------------------------------------

    def _sample(self, gpu: _Gpu) -> GpuSample:
        nv = self._nvml
        h = gpu.handle
        s = self._blank(gpu)
        power = self._optional("nvmlDeviceGetPowerUsage", h)
        s.power_watts = power / 1000 if power is not None else None  # mW
        energy = self._optional("nvmlDeviceGetTotalEnergyConsumption", h)
        s.energy_joules = energy / 1000 if energy is not None else None  # mJ
        util = self._optional("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            s.utilization_gpu, s.utilization_memory = util.gpu / 100, util.memory / 100
        memory = self._memory(gpu)
        if memory is not None:
            s.memory_used_bytes, s.memory_total_bytes = int(memory.used), int(memory.total)
            gpu.memory_total_bytes = s.memory_total_bytes
        temperature = self._optional("nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
        s.temperature_celsius = float(temperature) if temperature is not None else None
        clock = self._optional("nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
        s.sm_clock_mhz = float(clock) if clock is not None else None
        mode = self._optional("nvmlDeviceGetMigMode", h)
        if mode is not None:
            s.mig_enabled = mode[0] == nv.NVML_DEVICE_MIG_ENABLE
            s.mig = self._mig_instances(h) if s.mig_enabled else []
        ecc = self._optional(
            "nvmlDeviceGetTotalEccErrors",
            h,
            nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nv.NVML_VOLATILE_ECC,
        )
        s.ecc_uncorrected_volatile = ecc
        if ecc is not None:
            if gpu.ecc_last is not None:
                # A smaller value means the driver reloaded and the volatile counter restarted.
                gpu.health_errors += ecc - gpu.ecc_last if ecc >= gpu.ecc_last else ecc
            gpu.ecc_last = ecc
        gpu.health_errors += self._drain_xids(gpu)
        s.xid_events, s.last_xid, s.health_errors = gpu.xid_events, gpu.last_xid, gpu.health_errors
        return s

    def _mig_instances(self, handle: Any) -> list[MigInstance]:
        instances = []
        for index in range(int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle))):
            try:
                mig = self._nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
            except self._nvml.NVMLError_NotFound:
                continue  # an empty slot
            except self._nvml.NVMLError as err:
                raise _CallFailed(f"nvmlDeviceGetMigDeviceHandleByIndex({index}): {err}") from err
            attributes = self._optional("nvmlDeviceGetAttributes", mig)
            instances.append(
                MigInstance(
                    index=index,
                    uuid=str(self._call("nvmlDeviceGetUUID", mig)),
                    gpu_instance_id=self._optional("nvmlDeviceGetGpuInstanceId", mig),
                    compute_instance_id=self._optional("nvmlDeviceGetComputeInstanceId", mig),
                    sm_count=attributes.multiprocessorCount if attributes is not None else None,
                    memory_total_bytes=(
                        attributes.memorySizeMB * 2**20 if attributes is not None else None
                    ),
                )
            )
        return instances

    def _drain_xids(self, gpu: _Gpu) -> int:
        """Take the pending XID events without waiting; return how many count as health errors."""
        nv = self._nvml
        if gpu.event_set is None:
            return 0
        counted = 0
        for _ in range(self._config.max_events_per_cycle):
            try:
                event = nv.nvmlEventSetWait_v2(gpu.event_set, 0)
            except nv.NVMLError_Timeout:
                break
            except nv.NVMLError as err:
                raise _CallFailed(f"nvmlEventSetWait_v2: {err}") from err
            if event.eventType & nv.nvmlEventTypeXidCriticalError:
                gpu.xid_events += 1
                gpu.last_xid = int(event.eventData)
                if gpu.last_xid not in self._ignored_xids:
                    counted += 1
        return counted

    # ----- helpers -------------------------------------------------------------------------

    def _call(self, function: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as err:
            raise _CallFailed(f"{function}: {err}") from err

    def _memory(self, gpu: _Gpu) -> Any:
        """Memory as nvidia-smi shows it: NVML's v2 query, whose ``used`` is what processes
        allocated; v1's also counts what the driver sets aside (0.6 GiB on an H200), which would
        make an idle GPU look in use. Drivers without v2 are asked v1 from then on."""
        nv = self._nvml
        if gpu.memory_v2:
            try:
                return nv.nvmlDeviceGetMemoryInfo(gpu.handle, nv.nvmlMemory_v2)
            except (nv.NVMLError_FunctionNotFound, nv.NVMLError_ArgumentVersionMismatch):
                gpu.memory_v2 = False
            except nv.NVMLError_NotSupported:
                return None
            except nv.NVMLError as err:
                raise _CallFailed(f"nvmlDeviceGetMemoryInfo_v2: {err}") from err
        return self._optional("nvmlDeviceGetMemoryInfo", gpu.handle)

    def _optional(self, function: str, *args: Any) -> Any:
        """Call NVML; None when the GPU or driver does not support the query."""
        try:
            return getattr(self._nvml, function)(*args)
        except self._not_supported:
            return None
        except self._nvml.NVMLError as err:
            raise _CallFailed(f"{function}: {err}") from err

    def _blank(self, gpu: _Gpu) -> GpuSample:
        return GpuSample(
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            pci_bus_id=gpu.pci_bus_id,
            compute_capability=gpu.compute_capability,
            sm_count=gpu.sm_count,
            sm_clock_max_mhz=gpu.sm_clock_max_mhz,
            xid_events=gpu.xid_events,
            last_xid=gpu.last_xid,
            health_errors=gpu.health_errors,
        )

    def _down(self, gpu: _Gpu, cause: str) -> GpuSample:
        s = self._blank(gpu)
        s.up = False
        where = ", ".join(part for part in (gpu.name, gpu.pci_bus_id) if part)
        s.error = f"nvml: GPU {gpu.index} {gpu.uuid}" + (f" ({where})" if where else "")
        s.error += f": {cause}"
        return s

    def _add(self, reading: Reading, s: GpuSample) -> None:
        device = s.uuid
        points = reading.points
        points.append(Point("accelerator_up", device, 1.0 if s.up else 0.0))
        points.append(Point("accelerator_health_errors_total", device, float(s.health_errors)))
        for metric, value in (
            ("accelerator_power_watts", s.power_watts),
            ("accelerator_energy_joules_total", s.energy_joules),
            ("accelerator_utilization_ratio", s.utilization_gpu),
            ("accelerator_memory_used_bytes", s.memory_used_bytes),
            ("accelerator_memory_total_bytes", s.memory_total_bytes),
            ("accelerator_temperature_celsius", s.temperature_celsius),
            ("accelerator_sm_clock_hertz", s.sm_clock_mhz * 1e6 if s.sm_clock_mhz else None),
        ):
            if value is not None:
                points.append(Point(metric, device, float(value)))
        if s.error:
            reading.errors.append(s.error)
        gpu = self._gpus[s.uuid]
        reading.accelerators.append(
            AcceleratorInfo(
                uuid=s.uuid,
                model=gpu.name or "unknown NVIDIA GPU",
                vendor=VENDOR,
                rack=self._config.rack,
                pci_bus_id=gpu.pci_bus_id,
                memory_total_bytes=gpu.memory_total_bytes,
                sm_count=gpu.sm_count,
                sm_clock_max_mhz=gpu.sm_clock_max_mhz,
                compute_capability=gpu.compute_capability,
            )
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ----- python -m agents.probes.nvml: what an operator runs on a GPU host ------------------------


def _fmt(value: object, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "not supported"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * scale:,.{digits}f}{unit}"
    return str(value)


def _fp16(s: GpuSample) -> Fp16Peak:
    return fp16_peak(
        s.name or "unknown",
        VENDOR,
        sm_count=s.sm_count,
        sm_clock_max_mhz=s.sm_clock_max_mhz,
        compute_capability=s.compute_capability,
    )


def _fp16_row(s: GpuSample) -> str:
    peak = _fp16(s)
    if peak.tflops is None:
        return "unknown model"
    return f"{peak.tflops:,.1f} TFLOPS ({'estimated' if peak.estimated else 'table'})"


def describe(samples: list[GpuSample]) -> list[tuple[str, list[str]]]:
    """Rows of the check table: (field, one value per GPU)."""

    def row(label: str, values: list[str]) -> tuple[str, list[str]]:
        return label, values

    def mig(s: GpuSample) -> str:
        if s.mig_enabled is None:
            return "not supported"
        if not s.mig_enabled:
            return "disabled"
        parts = [f"{m.uuid} ({_fmt(m.sm_count, digits=0)} SM)" for m in s.mig]
        return "enabled: " + ("; ".join(parts) or "no instances")

    return [
        row("index", [str(s.index) for s in samples]),
        row("up", ["yes" if s.up else f"NO: {s.error}" for s in samples]),
        row("name", [_fmt(s.name) for s in samples]),
        row("UUID", [s.uuid for s in samples]),
        row("PCI bus id", [_fmt(s.pci_bus_id) for s in samples]),
        row("power", [_fmt(s.power_watts, " W") for s in samples]),
        row("energy (total)", [_fmt(s.energy_joules, " kJ", 1e-3) for s in samples]),
        row("GPU utilisation", [_fmt(s.utilization_gpu, " %", 100, 0) for s in samples]),
        row("memory utilisation", [_fmt(s.utilization_memory, " %", 100, 0) for s in samples]),
        row("memory used", [_fmt(s.memory_used_bytes, " GiB", 2**-30) for s in samples]),
        row("memory total", [_fmt(s.memory_total_bytes, " GiB", 2**-30) for s in samples]),
        row("temperature", [_fmt(s.temperature_celsius, " °C", digits=0) for s in samples]),
        row("SM clock", [_fmt(s.sm_clock_mhz, " MHz", digits=0) for s in samples]),
        row("SM clock max", [_fmt(s.sm_clock_max_mhz, " MHz", digits=0) for s in samples]),
        row("SM count", [_fmt(s.sm_count, digits=0) for s in samples]),
        row(
            "compute capability",
            [_fmt(".".join(map(str, s.compute_capability)) if s.compute_capability else None)
             for s in samples],
        ),
        row("MIG", [mig(s) for s in samples]),
        row(
            "ECC uncorrected (volatile)",
            [_fmt(s.ecc_uncorrected_volatile, digits=0) for s in samples],
        ),
        row("XID events seen", [str(s.xid_events) for s in samples]),
        row("FP16 peak (dense)", [_fp16_row(s) for s in samples]),
    ]


def main(nvml: Any = None) -> int:
    """Print one reading as a table; exit 0 when every GPU answered, 1 if not, 2 without NVML."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    try:
        probe = NvmlProbe(NvmlConfig(), nvml=nvml)
    except ProbeUnavailable as err:
        console.print(f"[red]{err}[/red]")
        return 2
    try:
        samples = probe.sample()
        table = Table(title=f"NVML (driver {probe.driver_version() or 'unknown'})")
        table.add_column("field")
        for s in samples:
            table.add_column(f"GPU {s.index}")
        for label, values in describe(samples):
            table.add_row(label, *values)
        console.print(table if samples else "NVML answered, but reports no GPU on this host.")
        for source in sorted({f"{s.name}: {_fp16(s).source}" for s in samples}):
            console.print(f"FP16 source, {source}")
        for error in probe.enumeration_errors:
            console.print(f"[red]{error}[/red]")
    finally:
        probe.close()
    healthy = samples and all(s.up for s in samples) and not probe.enumeration_errors
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
