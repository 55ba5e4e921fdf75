"""The NVML probe, against the strict fake in tests/fakes/pynvml.py (CI has no GPU).

The fake's own strictness is tested first: same function signatures as the installed pynvml,
the real constants and error classes, and refusal of calls the real library would refuse.
"""

from __future__ import annotations

import ctypes.util
import inspect
import subprocess
import sys
from datetime import UTC, datetime

import pynvml
import pytest

from agents.probe import ProbeUnavailable
from agents.probes.nvml import (
    GpuSample,
    NvmlConfig,
    NvmlProbe,
    describe,
    main,
    sm_count_from_cores,
)
from jinsuan.contract.accelerators import fp16_peak
from jinsuan.contract.metrics import CATALOGUE
from tests.fakes.pynvml import FakeGpu, FakeMig, FakeNvml

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HAS_NVML_LIBRARY = ctypes.util.find_library("nvidia-ml") is not None


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(),
        FakeGpu(
            name="NVIDIA A100-SXM4-80GB",
            uuid="GPU-11111111-2222-3333-4444-555555555555",
            bus_id="00000000:3B:00.0",
            power_mw=271_458,
            energy_mj=98_765_432,
            util_gpu_percent=87,
            memory_used=70 * 2**30,
            temperature_c=61,
            clocks_mhz={0: 1410, 1: 1410, 2: 1593, 3: 1275},
            max_clocks_mhz={0: 1410, 1: 1410, 2: 1593, 3: 1275},
            cuda_cores=6912,
            compute_capability=(8, 0),
        ),
    ]


def values(reading, device: str) -> dict[str, float]:
    return {p.metric: p.value for p in reading.points if p.device == device}


# ----- the fake is strict ----------------------------------------------------------------------


def test_every_fake_function_exists_in_real_pynvml_with_the_same_parameters():
    names = [n for n in dir(FakeNvml) if n.startswith("nvml") and callable(getattr(FakeNvml, n))]
    assert len(names) > 20
    for name in names:
        real = getattr(pynvml, name, None)
        assert real is not None, f"real pynvml has no {name}"
        fake_params = list(inspect.signature(getattr(FakeNvml, name)).parameters.values())[1:]
        real_params = list(inspect.signature(real).parameters.values())
        assert [(p.name, p.default) for p in fake_params] == [
            (p.name, p.default) for p in real_params
        ], name


def test_fake_uses_the_real_constants_and_error_classes():
    fake = FakeNvml([FakeGpu()])
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert fake.NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM
    assert fake.nvmlEventTypeXidCriticalError == pynvml.nvmlEventTypeXidCriticalError
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(handle, pynvml.c_nvmlDevice_t)
    pci = fake.nvmlDeviceGetPciInfo(handle)
    assert isinstance(pci, pynvml.nvmlPciInfo_t)  # the real struct, decoding bytes as it does
    assert pci.busId == "00000000:18:00.0"


def test_fake_refuses_calls_before_init_and_after_shutdown():
    fake = FakeNvml([FakeGpu()])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    fake.nvmlInit()
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetCount() == 1  # NVML counts inits; one shutdown is not enough
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlShutdown()


def test_fake_refuses_foreign_handles_bad_arguments_and_freed_event_sets():
    fake, other = FakeNvml([FakeGpu()]), FakeNvml([FakeGpu()])
    fake.nvmlInit()
    other.nvmlInit()
    foreign = other.nvmlDeviceGetHandleByIndex(0)
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetPowerUsage(foreign)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetPowerUsage(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetClockInfo(handle, 99)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetTemperature(handle, 7)
    with pytest.raises(TypeError):
        fake.nvmlDeviceGetClockInfo(handle, "sm")
    with pytest.raises(TypeError):
        fake.nvmlDeviceGetClockInfo(handle)
    with pytest.raises(TypeError):
        fake.nvmlDeviceGetPowerUsage(handle, 0)
    event_set = fake.nvmlEventSetCreate()
    fake.nvmlEventSetFree(event_set)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlEventSetWait_v2(event_set, 0)
    with pytest.raises(ValueError, match="not a device query"):
        FakeGpu().fail("nvmlDeviceGetPowerUsge", pynvml.NVML_ERROR_UNKNOWN)


def test_fake_mig_handles_answer_only_mig_queries():
    gpu = FakeGpu(mig_enabled=True, mig=[FakeMig("MIG-a", 1, 0, 14, 9856)])
    fake = FakeNvml([gpu])
    fake.nvmlInit()
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(fake.nvmlDeviceGetHandleByIndex(0), 0)
    assert fake.nvmlDeviceGetAttributes(mig).multiprocessorCount == 14
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetPowerUsage(mig)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetAttributes(fake.nvmlDeviceGetHandleByIndex(0))


# ----- the probe ---------------------------------------------------------------------------------


def test_memory_used_is_what_processes_allocated_not_the_drivers_reserve():
    """nvidia-smi's ``memory.used`` leaves out what the driver sets aside; NVML's v1 query counts
    it (an idle H200 read 0.6 GiB used by v1, 0 MiB by nvidia-smi). Older drivers have only v1:
    the probe asks v2 once, then v1."""
    new_driver = FakeGpu(memory_used=0)
    old_driver = FakeGpu(uuid="GPU-22222222-2222-3333-4444-555555555555",
                         bus_id="00000000:3B:00.0", memory_used=0, memory_info_v2=False)
    fake = FakeNvml([new_driver, old_driver])
    probe = NvmlProbe(NvmlConfig(), nvml=fake)
    for _ in range(2):
        reading = probe.read(NOW)
        assert reading.errors == []
        assert values(reading, new_driver.uuid)["accelerator_memory_used_bytes"] == 0
        assert (values(reading, old_driver.uuid)["accelerator_memory_used_bytes"]
                == old_driver.memory_reserved)
    old_handle = fake.nvmlDeviceGetHandleByIndex(1)
    asked_v2 = [args for name, args in fake.calls
                if name == "nvmlDeviceGetMemoryInfo" and args == (old_handle, pynvml.nvmlMemory_v2)]
    assert len(asked_v2) == 1

def test_values_are_converted_to_base_units():
    gpus = two_gpus()
    probe = NvmlProbe(NvmlConfig(rack="R01"), nvml=FakeNvml(gpus))
    reading = probe.read(NOW)
    assert reading.errors == []
    for gpu in gpus:
        got = values(reading, gpu.uuid)
        assert got["accelerator_up"] == 1
        assert got["accelerator_power_watts"] == pytest.approx(gpu.power_mw / 1000)
        assert got["accelerator_energy_joules_total"] == pytest.approx(gpu.energy_mj / 1000)
        assert got["accelerator_utilization_ratio"] == pytest.approx(gpu.util_gpu_percent / 100)
        assert got["accelerator_memory_used_bytes"] == gpu.memory_used
        assert got["accelerator_memory_total_bytes"] == gpu.memory_total
        assert got["accelerator_temperature_celsius"] == gpu.temperature_c
        sm_clock = gpu.clocks_mhz[pynvml.NVML_CLOCK_SM]
        assert got["accelerator_sm_clock_hertz"] == pytest.approx(sm_clock * 1e6)
        assert got["accelerator_health_errors_total"] == 0
    for point in reading.points:
        metric = CATALOGUE[point.metric]
        assert metric.check(point.value) is None, point


def test_inventory_describes_each_gpu():
    gpus = two_gpus()
    reading = NvmlProbe(NvmlConfig(rack="R01"), nvml=FakeNvml(gpus)).read(NOW)
    by_uuid = {a.uuid: a for a in reading.accelerators}
    assert set(by_uuid) == {g.uuid for g in gpus}
    h100, a100 = by_uuid[gpus[0].uuid], by_uuid[gpus[1].uuid]
    assert (h100.model, h100.vendor, h100.rack) == (gpus[0].name, "NVIDIA", "R01")
    assert h100.pci_bus_id == gpus[0].bus_id
    assert h100.memory_total_bytes == gpus[0].memory_total
    assert h100.sm_clock_max_mhz == gpus[0].max_clocks_mhz[pynvml.NVML_CLOCK_SM]
    assert h100.sm_count == 132  # 16896 CUDA cores / 128 FP32 lanes per Hopper SM
    assert a100.sm_count == 108  # 6912 / 64 on GA100
    assert (h100.compute_capability, a100.compute_capability) == ((9, 0), (8, 0))


def test_sm_count_needs_a_known_architecture():
    assert sm_count_from_cores(16896, (9, 0)) == 132
    assert sm_count_from_cores(16896, (42, 0)) is None
    assert sm_count_from_cores(100, (9, 0)) is None  # not a whole number of SMs


def test_unsupported_queries_leave_their_metric_out():
    old = FakeGpu(
        name="Tesla P100-PCIE-16GB",
        energy_mj=None,
        cuda_cores=None,
        mig_enabled=None,
        ecc_uncorrected_volatile=None,
        xid_events_supported=False,
        compute_capability=(6, 0),
    )
    probe = NvmlProbe(NvmlConfig(), nvml=FakeNvml([old]))
    reading = probe.read(NOW)
    got = values(reading, old.uuid)
    assert reading.errors == []
    assert got["accelerator_up"] == 1
    assert "accelerator_energy_joules_total" not in got
    assert got["accelerator_power_watts"] == pytest.approx(old.power_mw / 1000)
    assert reading.accelerators[0].sm_count is None
    [sample] = probe.sample()
    assert (sample.energy_joules, sample.mig_enabled, sample.ecc_uncorrected_volatile) == (
        None,
        None,
        None,
    )


def test_a_lost_gpu_is_reported_down_under_its_uuid_and_the_others_keep_reading():
    gpus = two_gpus()
    probe = NvmlProbe(NvmlConfig(), nvml=FakeNvml(gpus))
    probe.read(NOW)
    gpus[1].lost = True
    reading = probe.read(NOW)
    lost = values(reading, gpus[1].uuid)
    assert lost["accelerator_up"] == 0
    assert "accelerator_power_watts" not in lost
    [error] = reading.errors
    assert gpus[1].uuid in error and "GPU is lost" in error and gpus[1].bus_id in error
    assert values(reading, gpus[0].uuid)["accelerator_up"] == 1
    assert {a.uuid for a in reading.accelerators} == {g.uuid for g in gpus}


def test_an_unknown_error_marks_the_gpu_down_naming_the_call_until_it_clears():
    gpus = two_gpus()
    probe = NvmlProbe(NvmlConfig(), nvml=FakeNvml(gpus))
    gpus[0].fail("nvmlDeviceGetTemperature", pynvml.NVML_ERROR_UNKNOWN)
    reading = probe.read(NOW)
    assert values(reading, gpus[0].uuid)["accelerator_up"] == 0
    [error] = reading.errors
    assert "nvmlDeviceGetTemperature" in error and "Unknown Error" in error
    gpus[0].heal("nvmlDeviceGetTemperature")
    reading = probe.read(NOW)
    assert values(reading, gpus[0].uuid)["accelerator_up"] == 1
    assert reading.errors == []


def test_a_gpu_that_leaves_the_enumeration_keeps_being_reported_down():
    gpus = two_gpus()
    fake = FakeNvml(gpus)
    probe = NvmlProbe(NvmlConfig(), nvml=fake)
    gone = fake.unplug(0)
    reading = probe.read(NOW)
    assert values(reading, gone.uuid)["accelerator_up"] == 0
    assert any(gone.uuid in e and "no longer enumerated" in e for e in reading.errors)
    assert values(reading, gpus[1].uuid)["accelerator_up"] == 1
    [remaining] = [s for s in probe.sample() if s.up]
    assert remaining.index == 0  # indices shift; the probe follows UUIDs


def test_a_gpu_failing_at_start_is_retried_and_then_read():
    gpu = FakeGpu()
    gpu.fail("nvmlDeviceGetName", pynvml.NVML_ERROR_UNKNOWN)
    probe = NvmlProbe(NvmlConfig(), nvml=FakeNvml([gpu]))
    reading = probe.read(NOW)
    assert values(reading, gpu.uuid)["accelerator_up"] == 0
    assert "nvmlDeviceGetName" in reading.errors[0]
    gpu.heal("nvmlDeviceGetName")
    reading = probe.read(NOW)
    assert values(reading, gpu.uuid)["accelerator_up"] == 1
    assert reading.accelerators[0].model == gpu.name


def test_missing_nvml_library_is_a_clear_startup_error():
    fake = FakeNvml([FakeGpu()], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(ProbeUnavailable, match=r"libnvidia-ml\.so\.1") as raised:
        NvmlProbe(NvmlConfig(), nvml=fake)
    assert "NVML Shared Library Not Found" in str(raised.value)
    fake = FakeNvml([FakeGpu()], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(ProbeUnavailable, match="Driver Not Loaded"):
        NvmlProbe(NvmlConfig(), nvml=fake)


@pytest.mark.skipif(HAS_NVML_LIBRARY, reason="this host has NVML; see deploy/gpu-check.sh")
def test_real_pynvml_without_a_driver_is_a_clear_startup_error():
    with pytest.raises(ProbeUnavailable, match=r"libnvidia-ml\.so\.1"):
        NvmlProbe(NvmlConfig())


def test_missing_pynvml_package_is_a_clear_startup_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(ProbeUnavailable, match="nvidia-ml-py"):
        NvmlProbe(NvmlConfig())


def test_mig_instances_are_listed_and_whole_gpu_utilisation_is_omitted():
    instances = [
        FakeMig("MIG-0f3a1c2e-0000-5000-8000-000000000001", 1, 0, 60, 40_192),
        FakeMig("MIG-0f3a1c2e-0000-5000-8000-000000000002", 2, 0, 32, 19_968),
    ]
    gpu = FakeGpu(mig_enabled=True, mig=instances)
    probe = NvmlProbe(NvmlConfig(), nvml=FakeNvml([gpu]))
    [sample] = probe.sample()
    assert sample.up and sample.mig_enabled
    assert [(m.uuid, m.gpu_instance_id, m.sm_count) for m in sample.mig] == [
        (i.uuid, i.gpu_instance_id, i.sm_count) for i in instances
    ]
    assert sample.mig[1].memory_total_bytes == instances[1].memory_mb * 2**20
    assert sample.utilization_gpu is None
    assert "accelerator_utilization_ratio" not in values(probe.read(NOW), gpu.uuid)


def test_xid_events_and_ecc_errors_are_counted_as_health_errors():
    gpus = two_gpus()
    fake = FakeNvml(gpus)
    probe = NvmlProbe(NvmlConfig(), nvml=fake)
    fake.raise_xid(0, 79)  # fallen off the bus
    fake.raise_xid(0, 48)  # double-bit ECC
    fake.raise_xid(0, 43)  # an application's channel stopped: ignored by default
    reading = probe.read(NOW)
    assert values(reading, gpus[0].uuid)["accelerator_health_errors_total"] == 2
    assert values(reading, gpus[1].uuid)["accelerator_health_errors_total"] == 0
    gpus[0].ecc_uncorrected_volatile = 3
    reading = probe.read(NOW)
    assert values(reading, gpus[0].uuid)["accelerator_health_errors_total"] == 5
    gpus[0].ecc_uncorrected_volatile = 1  # driver reloaded: the volatile counter restarted
    reading = probe.read(NOW)
    assert values(reading, gpus[0].uuid)["accelerator_health_errors_total"] == 6
    [sample, _] = probe.sample()
    assert (sample.xid_events, sample.last_xid) == (3, 43)
    waits = [args for name, args in fake.calls if name == "nvmlEventSetWait_v2"]
    assert waits and all(timeout == 0 for _, timeout in waits)  # never blocks a cycle


def test_xid_drain_is_bounded_per_cycle():
    fake = FakeNvml([FakeGpu()])
    probe = NvmlProbe(NvmlConfig(max_events_per_cycle=2, ignored_xids=[]), nvml=fake)
    for _ in range(5):
        fake.raise_xid(0, 94)
    totals = [values(probe.read(NOW), fake.gpus[0].uuid) for _ in range(3)]
    assert [t["accelerator_health_errors_total"] for t in totals] == [2, 4, 5]


def test_close_frees_event_sets_and_shuts_nvml_down():
    fake = FakeNvml(two_gpus())
    probe = NvmlProbe(NvmlConfig(), nvml=fake)
    probe.close()
    probe.close()
    assert sum(1 for name, _ in fake.calls if name == "nvmlEventSetFree") == 2
    assert sum(1 for name, _ in fake.calls if name == "nvmlShutdown") == 1
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_check_table_shows_every_field_and_what_is_unsupported():
    gpus = two_gpus()
    gpus[1].energy_mj = None
    samples: list[GpuSample] = NvmlProbe(NvmlConfig(), nvml=FakeNvml(gpus)).sample()
    rows = dict(describe(samples))
    assert rows["UUID"] == [g.uuid for g in gpus]
    assert rows["energy (total)"][1] == "not supported"
    assert rows["power"][0] == f"{gpus[0].power_mw / 1000:,.1f} W"
    assert rows["SM count"] == ["132", "108"]
    assert rows["compute capability"] == ["9.0", "8.0"]
    assert rows["MIG"] == ["disabled", "disabled"]
    h100 = fp16_peak(gpus[0].name, "NVIDIA")
    assert rows["FP16 peak (dense)"][0] == f"{h100.tflops:,.1f} TFLOPS (table)"


def test_check_command_prints_the_table_and_fails_when_a_gpu_is_down(capsys):
    gpus = two_gpus()
    assert main(FakeNvml(gpus)) == 0
    out = capsys.readouterr().out
    assert gpus[0].uuid in out and gpus[1].name in out and "FP16 source" in out
    gpus[1].lost = True
    assert main(FakeNvml(gpus)) == 1
    assert "GPU is lost" in capsys.readouterr().out


@pytest.mark.skipif(HAS_NVML_LIBRARY, reason="this host has NVML; see deploy/gpu-check.sh")
def test_check_command_without_nvml_exits_with_the_reason():
    done = subprocess.run(
        [sys.executable, "-m", "agents.probes.nvml"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "libnvidia-ml.so.1" in done.stdout + done.stderr
