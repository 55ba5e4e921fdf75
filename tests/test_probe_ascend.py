"""The Ascend probe, parsing npu-smi output.

No Ascend hardware runs here. The samples in tests/data/npu-smi/ were written by hand from
published npu-smi output, keeping the layout, column widths and quirks and changing the values:

- info-910b3.txt: the Atlas A2 layout (one chip per NPU, second header row "Chip") as printed
  for eight 910B3 in github.com/vllm-project/vllm-ascend/issues/1130, with the compact
  "56152/ 65536" HBM column seen in github.com/vllm-project/vllm-omni/issues/3597, Warning and
  Alarm health states (the states Huawei documents: OK, Warning, Alarm, Critical, UNKNOWN) and
  the process table that follows the device table;
- info-a3.txt: the A3 layout (two chips per NPU, header "Chip  Phy-ID", power shown on the
  first chip and "-" on the second) from npu-smi 24.1.rc3.7 in vllm-ascend issue 2035;
- info-910b4.txt: 910B4 with 32 GB HBM, npu-smi 25.2.3, from vllm-ascend issue 5772;
- common-*.txt: "npu-smi info -t common -i N" as laid out in Huawei's npu-smi reference
  (hiascend.com/document/detail/zh/Atlas%20200I%20A2/2520/re/npu/npusmi_014.html: NPU ID, Chip
  Count, a block per chip, then the MCU block), with the Aicore Freq(MHZ), Aicore curFreq(MHZ)
  and Aicore Count fields 910B prints (20 AI cores at 1800 MHz for a 910B3);
- board-910b3.txt: "npu-smi info -t board -i N -c C" as laid out in Huawei's reference
  (hiascend.com/document/detail/zh/Atlas%20200I%20A2/2520/re/npu/npusmi_009.html: Chip Type,
  Chip Name, Board ID, Die ID...).

The command runner is the injection point: most tests hand the probe a runner that answers from
these files and refuses any other command; the last tests run a real executable through the
default runner to check the timeout and exit-status handling.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.probe import ProbeUnavailable
from agents.probes.ascend import (
    AscendConfig,
    AscendProbe,
    CommandFailed,
    NpuSmiParseError,
    die_id,
    parse_common,
    parse_info,
)
from jinsuan.contract.metrics import CATALOGUE

DATA = Path(__file__).parent / "data" / "npu-smi"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIB = 2**20


def sample(name: str) -> str:
    return (DATA / name).read_text()


class Runner:
    """Answers npu-smi commands from a table; anything else fails as an unknown command would."""

    def __init__(self, answers: dict[tuple[str, ...], str | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> str:
        assert timeout > 0
        key = tuple(argv)
        self.calls.append(key)
        answer = self.answers.get(key)
        if answer is None:
            raise CommandFailed(f"{' '.join(argv)}: exit status 2: unknown command")
        if isinstance(answer, Exception):
            raise answer
        return answer


def board_for(npu: int, chip: int) -> str:
    """The board sample with a die id unique to (npu, chip)."""
    return sample("board-910b3.txt").replace("00210000", f"0021{npu:02X}{chip:02X}")


def runner_910b3(info: str | None = None) -> Runner:
    answers: dict[tuple[str, ...], str | Exception] = {
        ("npu-smi", "info"): info or sample("info-910b3.txt")
    }
    for npu in range(8):
        answers["npu-smi", "info", "-t", "board", "-i", str(npu), "-c", "0"] = board_for(npu, 0)
        answers["npu-smi", "info", "-t", "common", "-i", str(npu)] = sample("common-910b3.txt")
    return Runner(answers)


def values(reading, device: str) -> dict[str, float]:
    return {p.metric: p.value for p in reading.points if p.device == device}


# ----- parsing -----------------------------------------------------------------------------------


def test_parses_the_a2_table_of_eight_910b3():
    rows = parse_info(sample("info-910b3.txt"))
    assert [r.npu for r in rows] == list(range(8))
    first = rows[0]
    assert (first.name, first.health, first.chip) == ("910B3", "OK", 0)
    assert first.bus_id == "0000:C1:00.0"
    assert first.power_watts == 92.6 and first.temperature_celsius == 41
    assert first.aicore_ratio == 0
    assert (first.memory_used_bytes, first.memory_total_bytes) == (3379 * MIB, 65536 * MIB)
    assert rows[1].memory_used_bytes == 61842 * MIB  # "61842/ 65536": no space before the slash
    assert rows[1].aicore_ratio == pytest.approx(0.37)
    assert [r.health for r in rows if r.health != "OK"] == ["Warning", "Alarm"]


def test_parses_the_a3_table_with_two_chips_per_npu():
    rows = parse_info(sample("info-a3.txt"))
    assert [(r.npu, r.chip, r.phy_id) for r in rows] == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]
    assert [r.power_watts for r in rows] == [178.8, None, 185.4, None]  # "-" on the second chip
    assert rows[3].bus_id == "0000:9B:00.0"


def test_parses_910b4_with_32_gb():
    rows = parse_info(sample("info-910b4.txt"))
    assert [(r.name, r.memory_used_bytes) for r in rows] == [
        ("910B4", 9030 * MIB),
        ("910B4", 29267 * MIB),
    ]
    assert rows[0].memory_total_bytes == 32768 * MIB


@pytest.mark.parametrize(
    ("line", "replacement", "expected"),
    [
        (13, "| 2  910B3 | OK   | 8x.8  43  0 / 0 |", r"line 13: Power\(W\) '8x\.8'"),
        (13, "| 2  910B3 | Fine | 88.8  43  0 / 0 |", "line 13: expected an NPU row"),
        (14, "| 0     | 0000:81:00.0 | 0     0 / 0     3380 |", "line 14: expected 'AICore"),
        (14, "| x     | 0000:81:00.0 | 0     0 / 0     3380 / 65536 |", "line 14: expected 'Chip"),
        (14, "| 0     | 81:00.0      | 0     0 / 0     3380 / 65536 |", "line 14: .*with a Bus-Id"),
    ],
)
def test_unparseable_lines_are_named(line, replacement, expected):
    lines = sample("info-910b3.txt").splitlines()
    lines[line - 1] = replacement
    with pytest.raises(NpuSmiParseError, match=expected) as raised:
        parse_info("\n".join(lines), command="/usr/local/sbin/npu-smi info")
    assert str(raised.value).startswith("/usr/local/sbin/npu-smi info: ")


def test_output_without_a_device_table_is_an_error():
    with pytest.raises(NpuSmiParseError, match=r"no device table.*'dcmi module initialize failed"):
        parse_info("dcmi module initialize failed. ret is -8005\n")
    truncated = "\n".join(sample("info-910b3.txt").splitlines()[:7])
    with pytest.raises(NpuSmiParseError, match="line 7: NPU row without its chip row"):
        parse_info(truncated)


def test_parses_common_and_board_details():
    assert parse_common(sample("common-910b3.txt"))[0].aicore_count == 20
    a3 = parse_common(sample("common-a3.txt"))
    assert sorted(a3) == [0, 1]
    assert (a3[1].aicore_count, a3[1].aicore_freq_mhz) == (24, 1800)
    assert die_id(sample("board-910b3.txt")) == "03A1F2C4-20B1C3D4-00000000-00000000-00210000"
    assert die_id("Die ID : NA\n") is None


# ----- the probe ---------------------------------------------------------------------------------


def test_reads_every_chip_in_base_units_with_die_ids_as_uuids():
    probe = AscendProbe(AscendConfig(rack="R07"), runner=runner_910b3())
    reading = probe.read(NOW)
    rows = parse_info(sample("info-910b3.txt"))
    assert len(reading.accelerators) == 8
    for row, info in zip(rows, reading.accelerators, strict=True):
        assert info.uuid == "ascend-" + die_id(board_for(row.npu, 0))
        assert (info.model, info.vendor, info.rack) == ("Ascend910B3", "Huawei", "R07")
        assert (info.pci_bus_id, info.sm_count, info.sm_clock_max_mhz) == (row.bus_id, 20, 1800)
        assert info.memory_total_bytes == 65536 * MIB
        got = values(reading, info.uuid)
        assert got["accelerator_power_watts"] == row.power_watts
        assert got["accelerator_temperature_celsius"] == row.temperature_celsius
        assert got["accelerator_utilization_ratio"] == pytest.approx(row.aicore_ratio)
        assert got["accelerator_memory_used_bytes"] == row.memory_used_bytes
    for point in reading.points:
        assert CATALOGUE[point.metric].check(point.value) is None, point


def test_health_other_than_ok_is_reported_and_alarm_is_down():
    reading = AscendProbe(AscendConfig(), runner=runner_910b3()).read(NOW)
    by_bus = {a.pci_bus_id: a.uuid for a in reading.accelerators}
    warning, alarm = by_bus["0000:82:00.0"], by_bus["0000:42:00.0"]
    assert values(reading, warning)["accelerator_up"] == 1
    assert values(reading, alarm)["accelerator_up"] == 0
    assert sorted(reading.errors) == sorted(
        [
            f"ascend: NPU 3 chip 0 (910B3, 0000:82:00.0) {warning}: health Warning",
            f"ascend: NPU 7 chip 0 (910B3, 0000:42:00.0) {alarm}: health Alarm",
        ]
    )


def test_board_and_common_are_asked_once_per_chip():
    runner = runner_910b3()
    probe = AscendProbe(AscendConfig(), runner=runner)
    first = probe.read(NOW)
    second = probe.read(NOW)
    assert [a.uuid for a in first.accelerators] == [a.uuid for a in second.accelerators]
    assert sum(1 for call in runner.calls if "board" in call) == 8
    assert sum(1 for call in runner.calls if "common" in call) == 8
    assert runner.calls.count(("npu-smi", "info")) == 2


def test_a3_chips_each_get_their_own_identity_and_details():
    answers: dict[tuple[str, ...], str | Exception] = {("npu-smi", "info"): sample("info-a3.txt")}
    for npu in range(2):
        answers["npu-smi", "info", "-t", "common", "-i", str(npu)] = sample("common-a3.txt")
        for chip in range(2):
            key = ("npu-smi", "info", "-t", "board", "-i", str(npu), "-c", str(chip))
            answers[key] = board_for(npu, chip)
    reading = AscendProbe(AscendConfig(), runner=Runner(answers)).read(NOW)
    assert reading.errors == []
    assert len({a.uuid for a in reading.accelerators}) == 4
    assert {a.sm_count for a in reading.accelerators} == {24}
    second_chip = reading.accelerators[1].uuid
    assert "accelerator_power_watts" not in values(reading, second_chip)


def test_without_a_die_id_the_uuid_is_host_and_bus_id():
    runner = runner_910b3()
    for key in list(runner.answers):
        if "board" in key:
            runner.answers[key] = "        Die ID                         : NA\n"
    reading = AscendProbe(AscendConfig(host_id="node-07"), runner=runner).read(NOW)
    assert reading.accelerators[0].uuid == "ascend-node-07-0000:C1:00.0"
    runner = runner_910b3()
    probe = AscendProbe(AscendConfig(host_id="node-07", identify_by_die_id=False), runner=runner)
    assert probe.read(NOW).accelerators[2].uuid == "ascend-node-07-0000:81:00.0"
    assert not any("board" in call for call in runner.calls)


def test_a_failing_board_query_skips_the_chip_once_and_is_retried():
    runner = runner_910b3()
    board_2 = ("npu-smi", "info", "-t", "board", "-i", "2", "-c", "0")
    good = runner.answers[board_2]
    runner.answers[board_2] = CommandFailed("npu-smi info -t board -i 2 -c 0: exit status 1")
    probe = AscendProbe(AscendConfig(), runner=runner)
    reading = probe.read(NOW)
    assert len(reading.accelerators) == 7
    assert any("NPU 2 chip 0" in e and "will retry" in e for e in reading.errors)
    runner.answers[board_2] = good
    assert len(probe.read(NOW).accelerators) == 8


def test_a_failed_or_garbled_npu_smi_marks_known_chips_down():
    runner = runner_910b3()
    probe = AscendProbe(AscendConfig(), runner=runner)
    uuids = [a.uuid for a in probe.read(NOW).accelerators]
    runner.answers["npu-smi", "info"] = CommandFailed("npu-smi info: no answer within 5 s; killed")
    reading = probe.read(NOW)
    assert reading.errors[0] == "ascend: npu-smi info: no answer within 5 s; killed"
    assert [values(reading, u)["accelerator_up"] for u in uuids] == [0] * 8
    runner.answers["npu-smi", "info"] = sample("info-910b3.txt").replace("92.6", "9?.6")
    reading = probe.read(NOW)
    assert reading.errors[0] == "ascend: npu-smi info: line 7: Power(W) '9?.6' is not a number"
    assert [values(reading, u)["accelerator_up"] for u in uuids] == [0] * 8


def test_a_chip_missing_from_the_table_stays_reported_as_down():
    runner = runner_910b3()
    probe = AscendProbe(AscendConfig(), runner=runner)
    gone = probe.read(NOW).accelerators[7]
    lines = sample("info-910b3.txt").splitlines()
    runner.answers["npu-smi", "info"] = "\n".join(lines[:27] + lines[30:])
    reading = probe.read(NOW)
    assert values(reading, gone.uuid) == {"accelerator_up": 0}
    assert any(gone.uuid in e and "no longer listed" in e for e in reading.errors)
    assert len(reading.accelerators) == 8


def test_missing_npu_smi_is_a_clear_startup_error():
    with pytest.raises(ProbeUnavailable, match="'/opt/none/npu-smi' not found"):
        AscendProbe(AscendConfig(command="/opt/none/npu-smi"))


# ----- the real command runner, with an executable standing in for npu-smi -----------------------


def executable(tmp_path: Path, body: str) -> str:
    path = tmp_path / "npu-smi"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_reads_through_a_real_process(tmp_path):
    command = executable(
        tmp_path,
        f'case "$*" in\n'
        f'  "info") cat "{DATA}/info-910b4.txt" ;;\n'
        f'  "info -t board -i "*) sed "s/00210000/002100$5$7/" "{DATA}/board-910b3.txt" ;;\n'
        f'  "info -t common -i "*) cat "{DATA}/common-910b3.txt" ;;\n'
        f'  *) echo "unknown command $*" >&2; exit 2 ;;\n'
        f"esac\n",
    )
    reading = AscendProbe(AscendConfig(command=command)).read(NOW)
    assert reading.errors == []
    assert [a.uuid[-8:] for a in reading.accelerators] == ["00210000", "00210010"]
    assert values(reading, reading.accelerators[1].uuid)["accelerator_power_watts"] == 89.5


def test_a_hung_npu_smi_is_killed_at_the_timeout(tmp_path):
    command = executable(tmp_path, "exec sleep 600\n")
    reading = AscendProbe(AscendConfig(command=command, timeout_s=0.5)).read(NOW)
    assert reading.errors == [f"ascend: {command} info: no answer within 0.5 s; killed"]


def test_a_failing_npu_smi_reports_its_exit_status_and_message(tmp_path):
    message = "dcmi module initialize failed. ret is -8005"
    command = executable(tmp_path, f'echo "{message}" >&2\nexit 8\n')
    reading = AscendProbe(AscendConfig(command=command)).read(NOW)
    assert reading.errors == [f"ascend: {command} info: exit status 8: {message}"]
