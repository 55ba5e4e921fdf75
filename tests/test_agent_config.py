"""The agent's TOML config: valid files load, every mistake is reported with file and key."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from agents.config import PROBE_KINDS, ConfigError, _resolve, load_config

VALID = """
[site]
name = "taiyuan-dc1"
racks = ["A01", "A02"]

[agent]
platform_url = "https://jinsuan.example.cn/"
state_dir = "state"
interval_s = 15

[[probes.simulated]]
seed = 7
fleet = { "NVIDIA H800" = 8 }

[[probes.simulated]]
seed = 8
enabled = false
deadline_s = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


def test_valid_config_loads_with_defaults_and_resolved_paths(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.site.name == "taiyuan-dc1"
    assert config.site.racks == ["A01", "A02"]
    assert config.agent.platform_url == "https://jinsuan.example.cn"
    assert config.agent.state_dir == tmp_path.resolve() / "state"
    assert config.agent.metrics_listen == "0.0.0.0:9478"
    first, second = config.probes
    assert (first.kind, first.index, first.enabled, first.deadline_s) == ("simulated", 0, True, 12)
    assert first.settings.seed == 7 and first.settings.fleet == {"NVIDIA H800": 8}
    assert (second.enabled, second.deadline_s, second.key) == (False, 3.0, "probes.simulated[1]")
    probe = first.build()
    assert probe.name == "simulated"


def test_single_table_form_is_one_probe(tmp_path):
    text = VALID.split("[[probes.simulated]]")[0] + "[probes.simulated]\nseed = 1\n"
    (spec,) = load_config(write(tmp_path, text)).probes
    assert spec.settings.seed == 1


def test_every_mistake_is_reported_with_file_key_expected_and_got(tmp_path):
    found = problems(tmp_path, """
[site]
racks = ["A01", "A01", "bad rack"]

[agent]
platform_url = "ftp://x"
state_dir = "s"
interval_s = "ten"
colour = "blue"
metrics_listen = "localhost"

[extra]
""")
    path = tmp_path / "site.toml"
    text = "\n".join(found)
    assert f"{path}:extra: unknown section" in text
    assert f"{path}:site.name: expected a value, got nothing" in found
    assert any(p.startswith(f"{path}:site.racks[2]: expected a string matching") and
               "got 'bad rack'" in p for p in found)
    assert f"{path}:agent.platform_url: expected an http:// or https:// URL, got 'ftp://x'" in found
    assert f"{path}:agent.interval_s: expected a valid number, unable to parse string as a " \
           f"number, got 'ten'" in found
    assert f"{path}:agent.colour: unknown key" in found  # its value is never shown
    assert any(p.startswith(f"{path}:agent.metrics_listen: expected host:port") for p in found)


def test_duplicate_rack_ids_are_refused(tmp_path):
    found = problems(tmp_path, VALID.replace('["A01", "A02"]', '["A01", "A01"]'))
    assert found == [f"{tmp_path / 'site.toml'}:site.racks: rack id 'A01' appears more than "
                     "once (got ['A01', 'A01'])"]


def test_unknown_probe_kind_lists_the_valid_ones(tmp_path):
    found = problems(tmp_path, VALID + "\n[[probes.nvidia]]\nx = 1\n")
    assert found == [
        f"{tmp_path / 'site.toml'}:probes.nvidia: unknown probe kind; expected one of "
        + ", ".join(sorted(PROBE_KINDS))
    ]


def test_probe_section_errors_name_the_nested_key(tmp_path):
    found = problems(tmp_path, VALID + """
[[probes.simulated]]
seed = "x"
deadline_s = -1
enabled = "yes"
unknown = 1
""")
    path = tmp_path / "site.toml"
    assert f"{path}:probes.simulated[2].seed: expected a valid integer, unable to parse " \
           "string as an integer, got 'x'" in found
    assert f"{path}:probes.simulated[2].deadline_s: expected a number of seconds > 0, got -1" \
        in found
    assert f"{path}:probes.simulated[2].enabled: expected true or false, got 'yes'" in found
    assert f"{path}:probes.simulated[2].unknown: unknown key" in found


@pytest.mark.skipif(importlib.util.find_spec("pymodbus") is None, reason="pymodbus not installed")
def test_modbus_meter_error_path(tmp_path):
    found = problems(tmp_path, VALID + """
[[probes.modbus]]
[[probes.modbus.meters]]
id = "utility-main"
host = "10.0.0.5"
port = 70000
map = "eastron-sdm630"
role = "facility"
measures = "utility_input"
""")
    assert found == [f"{tmp_path / 'site.toml'}:probes.modbus[0].meters[0].port: expected less "
                     "than or equal to 65535, got 70000"]


def test_bad_toml_names_file_and_line(tmp_path):
    (problem,) = problems(tmp_path, "[site]\nname = \n")
    assert problem.startswith(f"{tmp_path / 'site.toml'}: not valid TOML:")
    assert "line 2" in problem


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_missing_sections_are_named(tmp_path):
    found = problems(tmp_path, "")
    assert found == [f"{tmp_path / 'site.toml'}:site: expected a [site] section, got nothing",
                     f"{tmp_path / 'site.toml'}:agent: expected a [agent] section, got nothing"]


def test_probe_libraries_are_imported_only_when_configured(tmp_path):
    path = write(tmp_path, VALID)
    code = (
        "import sys; from agents.config import load_config; "
        f"load_config({str(path)!r}); "
        "heavy = ('pymodbus', 'pysnmp', 'pynvml', 'agents.probes.modbus', 'agents.probes.snmp', "
        "'agents.probes.nvml', 'agents.probes.redfish', 'fastapi', 'psycopg'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", sorted(PROBE_KINDS))
def test_registry_entries_resolve_to_a_model_and_a_probe_class(kind):
    model_path, class_path = PROBE_KINDS[kind]
    if importlib.util.find_spec(model_path.partition(":")[0]) is None:
        pytest.skip(f"{model_path} not written yet")
    assert issubclass(_resolve(model_path), BaseModel)
    probe_class = _resolve(class_path)
    assert callable(getattr(probe_class, "read", None))


def test_executor_section_is_checked_before_anything_starts(tmp_path):
    config = load_config(write(tmp_path, VALID + '\n[executor]\nkind = "process"\nmax_runs = 4\n'))
    assert config.executor == {"kind": "process", "max_runs": 4}
    unknown = problems(tmp_path, VALID + '\n[executor]\nkind = "nomad"\n')
    assert len(unknown) == 1
    assert "site.toml:executor.kind" in unknown[0]
    assert "kubernetes, process, slurm" in unknown[0]
    bad = problems(tmp_path, VALID + '\n[executor]\nkind = "process"\nkill_grace_s = -1\n'
                   'max_runs = -1\n')
    assert any("site.toml:executor.kill_grace_s" in p for p in bad)
    assert any("site.toml:executor.max_runs" in p for p in bad)


def test_a_misspelt_secret_is_never_shown_and_the_nearest_key_is_suggested(tmp_path):
    """``pasword`` is unknown, but it holds a password all the same: the message (which reaches
    terminals and the journal) names the key and suggests the right one, never the value."""
    found = problems(tmp_path, VALID + """
[[probes.redfish]]
[[probes.redfish.bmcs]]
id = "bmc-1"
url = "https://10.0.0.5"
username = "root"
pasword = "Hunter2-Secret"

[[probes.redfish.bmcs]]
id = "bmc-2"
url = "https://10.0.0.6"
username = "root"
password = 12345678
""")
    text = "\n".join(found)
    assert "Hunter2-Secret" not in text and "12345678" not in text
    path = tmp_path / "site.toml"
    assert (f"{path}:probes.redfish[0].bmcs[0].pasword: unknown key; did you mean 'password'?"
            in found), found
    assert f"{path}:probes.redfish[0].bmcs[0].password: expected a value, got nothing" in found
    assert any(p.startswith(f"{path}:probes.redfish[0].bmcs[1].password: expected")
               and "not shown" in p for p in found), found
