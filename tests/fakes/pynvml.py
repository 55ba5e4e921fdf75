"""A strict stand-in for the ``pynvml`` module (PyPI ``nvidia-ml-py``) with configurable GPUs.

The CI machines have no GPU, so the NVML probe is tested against this fake. What a caller can
observe comes from the real package wherever possible, so codes and shapes cannot drift:

- every ``NVML_*`` constant, ``nvmlEventType*`` mask and ``NVMLError*`` class is copied from the
  installed ``pynvml`` (it imports fine without a GPU; only ``nvmlInit`` fails there);
- functions return the real ctypes structures (``nvmlPciInfo_t``, which decodes ``busId``,
  ``c_nvmlMemory_t``, ``c_nvmlUtilization_t``, ``c_nvmlEventData_t``...), and handles are real
  ``c_nvmlDevice_t`` / ``c_nvmlEventSet_t`` pointers;
- method names and parameters equal the real functions' (a test compares the signatures).

Strictness: a call the real library would refuse fails here too. Calls before ``nvmlInit`` or
after the matching ``nvmlShutdown`` raise ``NVMLError_Uninitialized``; a handle that is not a
device handle of *this* fake instance raises ``NVMLError_InvalidArgument``; so do unknown clock
types, temperature sensors and ECC counter kinds; a non-integer where ctypes wants ``c_uint``
raises ``TypeError``; a handle of a lost or unplugged GPU raises ``NVMLError_GpuIsLost``; MIG
device handles only answer the queries NVML supports on them.

Faults are injected per GPU: ``gpu.fail("nvmlDeviceGetPowerUsage", NVML_ERROR_UNKNOWN)``,
``gpu.lost = True``, ``fake.unplug(index)``, and XID events with ``fake.raise_xid(index, 79)``.
Every call is recorded in ``fake.calls`` as ``(name, args)``.
"""

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

NVMLError = _real.NVMLError


@dataclass
class FakeMig:
    """One MIG device (a compute instance) on a GPU in MIG mode."""

    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    sm_count: int
    memory_mb: int


@dataclass
class FakeGpu:
    """One GPU as NVML reports it. ``None`` in an optional field means the query is unsupported."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-6f0e7a4c-3d2b-4f1e-9a8b-0c1d2e3f4a5b"
    bus_id: str = "00000000:18:00.0"
    power_mw: int = 350_000
    energy_mj: int | None = 1_234_567_890  # None: before Volta, NVML has no energy counter
    util_gpu_percent: int = 50
    util_memory_percent: int = 30
    memory_total: int = 80 * 2**30
    memory_used: int = 10 * 2**30  # allocated, as nvidia-smi shows it
    # Set aside by the driver and firmware: NVML's v1 memory query counts it as used, v2 reports
    # it apart (an H200 read here: v1 0.6 GiB used while nvidia-smi showed 0 MiB).
    memory_reserved: int = 600 * 2**20
    memory_info_v2: bool = True  # False: a driver older than nvmlDeviceGetMemoryInfo_v2
    temperature_c: int = 45
    # by NVML clock type: graphics, SM, memory, video
    clocks_mhz: dict[int, int] = field(default_factory=lambda: {0: 1755, 1: 1755, 2: 2619, 3: 1545})
    max_clocks_mhz: dict[int, int] = field(
        default_factory=lambda: {0: 1980, 1: 1980, 2: 2619, 3: 1545}
    )
    cuda_cores: int | None = 16896
    compute_capability: tuple[int, int] = (9, 0)
    mig_enabled: bool | None = False  # None: the GPU has no MIG (before Ampere, or not a GA100+)
    mig: list[FakeMig] = field(default_factory=list)
    max_mig_devices: int = 7
    ecc_uncorrected_volatile: int | None = 0  # None: ECC off or unsupported
    ecc_uncorrected_aggregate: int | None = 0
    xid_events_supported: bool = True
    lost: bool = False
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, call: str, code: int) -> None:
        """Make every later ``call`` on this GPU raise the NVML error ``code``."""
        if not callable(getattr(FakeNvml, call, None)) or not call.startswith("nvmlDevice"):
            raise ValueError(f"{call!r} is not a device query of the fake NVML")
        if code not in NVMLError._valClassMapping:
            raise ValueError(f"{code} is not an NVML error code")
        self.failures[call] = code

    def heal(self, call: str) -> None:
        self.failures.pop(call, None)


@dataclass
class _EventSet:
    gpus: dict[int, int] = field(default_factory=dict)  # id(FakeGpu) -> registered mask
    pending: deque[tuple[FakeGpu, int, int]] = field(default_factory=deque)
    freed: bool = False


def _uint(value: object, what: str) -> int:
    """ctypes' ``c_uint(value)`` accepts ints only; so does the fake."""
    if not isinstance(value, int):
        raise TypeError(f"{what}: an integer is required (got {type(value).__name__})")
    return value


def _error(code: int) -> NVMLError:
    return NVMLError(code)


class FakeNvml:
    """An instance stands in for the ``pynvml`` module: pass it where the module is expected.

    The real module's constants and error classes are set on the class below the definition.
    """

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: int | None = None,
        driver_version: str = "550.54.15",
    ) -> None:
        """``init_error``: the NVML error code ``nvmlInit`` raises (e.g. library not found)."""
        self.gpus = list(gpus)
        self.init_error = init_error
        self.driver_version = driver_version
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self._refcount = 0
        self._keepalive: list[ctypes.Array[ctypes.c_char]] = []
        self._device_handles: dict[int, tuple[FakeGpu, FakeMig | None]] = {}
        self._handle_of: dict[tuple[int, str | None], Any] = {}
        self._event_sets: dict[int, _EventSet] = {}

    # ----- fault injection -------------------------------------------------------------------

    def unplug(self, index: int) -> FakeGpu:
        """Remove a GPU from enumeration; handles already given out answer GPU_IS_LOST."""
        gpu = self.gpus.pop(index)
        gpu.lost = True
        return gpu

    def raise_xid(self, index: int, xid: int) -> None:
        """Deliver an XID critical error of GPU ``index`` to every event set registered for it."""
        gpu = self.gpus[index]
        for event_set in self._event_sets.values():
            mask = event_set.gpus.get(id(gpu), 0)
            if mask & _real.nvmlEventTypeXidCriticalError and not event_set.freed:
                event_set.pending.append((gpu, _real.nvmlEventTypeXidCriticalError, xid))

    # ----- plumbing --------------------------------------------------------------------------

    def _enter(self, name: str, *args: object) -> None:
        self.calls.append((name, args))
        if self._refcount == 0:
            raise _error(_real.NVML_ERROR_UNINITIALIZED)

    def _new_pointer(self, pointer_type: Any) -> tuple[Any, int]:
        buffer = ctypes.create_string_buffer(8)
        self._keepalive.append(buffer)
        address = ctypes.addressof(buffer)
        return ctypes.cast(ctypes.c_void_p(address), pointer_type), address

    def _handle(self, gpu: FakeGpu, mig: FakeMig | None) -> Any:
        key = (id(gpu), mig.uuid if mig else None)
        if key not in self._handle_of:
            handle, address = self._new_pointer(_real.c_nvmlDevice_t)
            self._device_handles[address] = (gpu, mig)
            self._handle_of[key] = handle
        return self._handle_of[key]

    def _resolve(self, handle: object, call: str) -> tuple[FakeGpu, FakeMig | None]:
        if not isinstance(handle, _real.c_nvmlDevice_t):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        found = self._device_handles.get(ctypes.cast(handle, ctypes.c_void_p).value or 0)
        if found is None:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu, mig = found
        if gpu.lost:
            raise _error(_real.NVML_ERROR_GPU_IS_LOST)
        if call in gpu.failures:
            raise _error(gpu.failures[call])
        return gpu, mig

    def _gpu(self, handle: object, call: str) -> FakeGpu:
        """A full GPU handle: queries NVML does not answer for MIG devices refuse one."""
        gpu, mig = self._resolve(handle, call)
        if mig is not None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _mig(self, handle: object, call: str) -> FakeMig:
        _, mig = self._resolve(handle, call)
        if mig is None:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return mig

    def _event_set(self, event_set: object) -> _EventSet:
        if not isinstance(event_set, _real.c_nvmlEventSet_t):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        found = self._event_sets.get(ctypes.cast(event_set, ctypes.c_void_p).value or 0)
        if found is None or found.freed:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return found

    # ----- library ---------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append(("nvmlInit", ()))
        if self.init_error is not None:
            raise _error(self.init_error)
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self._refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    # ----- devices ---------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex", index)
        if not 0 <= _uint(index, "index") < len(self.gpus):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise _error(_real.NVML_ERROR_GPU_IS_LOST)
        return self._handle(gpu, None)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetName", handle)
        gpu, mig = self._resolve(handle, "nvmlDeviceGetName")
        return gpu.name if mig is None else f"{gpu.name} MIG {mig.sm_count}SM"

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetUUID", handle)
        gpu, mig = self._resolve(handle, "nvmlDeviceGetUUID")
        return gpu.uuid if mig is None else mig.uuid

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetPciInfo", handle)
        gpu = self._gpu(handle, "nvmlDeviceGetPciInfo")
        info = _real.nvmlPciInfo_t()
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id[4:].encode()
        domain, bus, rest = gpu.bus_id.split(":")
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest[:2], 16)
        return info

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetPowerUsage", handle)
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetTotalEnergyConsumption", handle)
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if gpu.energy_mj is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetUtilizationRates", handle)
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        if gpu.mig_enabled:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)  # NVML has no whole-GPU rate in MIG mode
        util = _real.c_nvmlUtilization_t()
        util.gpu, util.memory = gpu.util_gpu_percent, gpu.util_memory_percent
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        self._enter("nvmlDeviceGetMemoryInfo", handle, version)
        gpu, mig = self._resolve(handle, "nvmlDeviceGetMemoryInfo")
        total = gpu.memory_total if mig is None else mig.memory_mb * 2**20
        used = gpu.memory_used if mig is None else 0
        reserved = gpu.memory_reserved if mig is None else 0
        if not version:
            memory = _real.c_nvmlMemory_t()
            memory.total, memory.used = total, used + reserved
            memory.free = total - memory.used
            return memory
        if not gpu.memory_info_v2:
            raise _error(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if version != _real.nvmlMemory_v2:
            raise _error(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        memory = _real.c_nvmlMemory_v2_t()
        memory.version = version
        memory.total, memory.reserved, memory.used = total, reserved, used
        memory.free = total - reserved - used
        return memory

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature", handle, sensor)
        if _uint(sensor, "sensor") != _real.NVML_TEMPERATURE_GPU:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature_c

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        self._enter("nvmlDeviceGetClockInfo", handle, type)
        if not 0 <= _uint(type, "type") < _real.NVML_CLOCK_COUNT:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle, "nvmlDeviceGetClockInfo").clocks_mhz[type]

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, type: int) -> int:
        self._enter("nvmlDeviceGetMaxClockInfo", handle, type)
        if not 0 <= _uint(type, "type") < _real.NVML_CLOCK_COUNT:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle, "nvmlDeviceGetMaxClockInfo").max_clocks_mhz[type]

    def nvmlDeviceGetNumGpuCores(self, device: Any) -> int:
        self._enter("nvmlDeviceGetNumGpuCores", device)
        gpu = self._gpu(device, "nvmlDeviceGetNumGpuCores")
        if gpu.cuda_cores is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.cuda_cores

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability", handle)
        return self._gpu(handle, "nvmlDeviceGetCudaComputeCapability").compute_capability

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors", handle, errorType, counterType)
        if not 0 <= _uint(errorType, "errorType") < _real.NVML_MEMORY_ERROR_TYPE_COUNT:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= _uint(counterType, "counterType") < _real.NVML_ECC_COUNTER_TYPE_COUNT:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        if errorType != _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            count = 0 if gpu.ecc_uncorrected_volatile is not None else None
        elif counterType == _real.NVML_VOLATILE_ECC:
            count = gpu.ecc_uncorrected_volatile
        else:
            count = gpu.ecc_uncorrected_aggregate
        if count is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return count

    # ----- MIG -------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        self._enter("nvmlDeviceGetMigMode", device)
        gpu = self._gpu(device, "nvmlDeviceGetMigMode")
        if gpu.mig_enabled is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        mode = _real.NVML_DEVICE_MIG_ENABLE if gpu.mig_enabled else _real.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount", device)
        gpu = self._gpu(device, "nvmlDeviceGetMaxMigDeviceCount")
        if gpu.mig_enabled is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.max_mig_devices if gpu.mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex", device, index)
        _uint(index, "index")
        gpu = self._gpu(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not gpu.mig_enabled or not 0 <= index < gpu.max_mig_devices:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig):
            raise _error(_real.NVML_ERROR_NOT_FOUND)
        return self._handle(gpu, gpu.mig[index])

    def nvmlDeviceGetAttributes(self, device: Any) -> Any:
        """NVML documents this query for MIG device handles only."""
        self._enter("nvmlDeviceGetAttributes", device)
        _, mig = self._resolve(device, "nvmlDeviceGetAttributes")
        if mig is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        attributes = _real.c_nvmlDeviceAttributes()
        attributes.multiprocessorCount = mig.sm_count
        attributes.memorySizeMB = mig.memory_mb
        return attributes

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", device)
        return self._mig(device, "nvmlDeviceGetGpuInstanceId").gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId", device)
        return self._mig(device, "nvmlDeviceGetComputeInstanceId").compute_instance_id

    # ----- events ----------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self._enter("nvmlEventSetCreate")
        handle, address = self._new_pointer(_real.c_nvmlEventSet_t)
        self._event_sets[address] = _EventSet()
        return handle

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        self._enter("nvmlDeviceRegisterEvents", handle, eventTypes, eventSet)
        _uint(eventTypes, "eventTypes")
        gpu = self._gpu(handle, "nvmlDeviceRegisterEvents")
        target = self._event_set(eventSet)
        if eventTypes & ~_real.nvmlEventTypeAll:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        if eventTypes & _real.nvmlEventTypeXidCriticalError and not gpu.xid_events_supported:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        target.gpus[id(gpu)] = target.gpus.get(id(gpu), 0) | eventTypes

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        """Never blocks: with nothing pending it answers NVML_ERROR_TIMEOUT at once."""
        self._enter("nvmlEventSetWait_v2", eventSet, timeoutms)
        _uint(timeoutms, "timeoutms")
        target = self._event_set(eventSet)
        if not target.pending:
            raise _error(_real.NVML_ERROR_TIMEOUT)
        gpu, event_type, data = target.pending.popleft()
        event = _real.c_nvmlEventData_t()
        event.device = self._handle(gpu, None)
        event.eventType, event.eventData = event_type, data
        return event

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._enter("nvmlEventSetFree", eventSet)
        self._event_set(eventSet).freed = True


for _name in dir(_real):
    if _name.startswith(("NVML_", "NVMLError", "nvmlEventType")) or _name == "nvmlMemory_v2":
        setattr(FakeNvml, _name, getattr(_real, _name))
