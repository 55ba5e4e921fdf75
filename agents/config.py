"""The agent's TOML config: the site, the agent's own settings, and the probes to run.

```toml
[site]
name = "taiyuan-dc1"
racks = ["A01", "A02"]

[agent]
platform_url = "https://jinsuan.example.cn"
state_dir = "/var/lib/jinsuan-agent"   # relative paths are taken from the config's folder
interval_s = 10

[[probes.modbus]]
deadline_s = 5          # agent-level keys: deadline_s, enabled; the rest is the probe's own
[[probes.modbus.meters]]
id = "utility-main"
...
```

Every mistake is reported as ``file:key: expected ..., got ...`` (all of them at once) before
anything starts. A probe kind maps to its config model and class by import path in
``PROBE_KINDS``; the module is imported only when a config names that kind, so the agent
starts without pymodbus, pysnmp or NVML installed on hosts that do not use them.
"""

from __future__ import annotations

import difflib
import importlib
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.probe import Probe
from jinsuan.contract.wire import Ident

# kind -> (config model, probe class), each "module:attribute".
PROBE_KINDS: dict[str, tuple[str, str]] = {
    "simulated": (
        "agents.probes.simulated:SimulatedSiteConfig",
        "agents.probes.simulated:SimulatedSite",
    ),
    "modbus": ("agents.probes.modbus:ModbusConfig", "agents.probes.modbus:ModbusProbe"),
    "snmp": ("agents.probes.snmp:SnmpProbeConfig", "agents.probes.snmp:SnmpProbe"),
    "redfish": ("agents.probes.redfish:RedfishConfig", "agents.probes.redfish:RedfishProbe"),
    "nvml": ("agents.probes.nvml:NvmlConfig", "agents.probes.nvml:NvmlProbe"),
    "ascend": ("agents.probes.ascend:AscendConfig", "agents.probes.ascend:AscendProbe"),
    "terminals": (
        "agents.probes.terminals:TerminalsConfig",
        "agents.probes.terminals:TerminalsProbe",
    ),
}

# Keys of a probe section that belong to the agent, not to the probe's own config model.
AGENT_PROBE_KEYS = ("enabled", "deadline_s")

DEFAULT_METRICS_LISTEN = "0.0.0.0:9478"


class ConfigError(Exception):
    """The config is wrong; ``problems`` holds one ``file:key: ...`` line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSection(_Section):
    """The data centre this agent reports for."""

    name: str = Field(min_length=1, max_length=200)
    racks: list[Ident] = Field(
        default_factory=list, description="Ids of the site's physical racks (its inventory)."
    )

    @field_validator("racks")
    @classmethod
    def _unique_racks(cls, racks: list[str]) -> list[str]:
        seen: set[str] = set()
        for rack in racks:
            if rack in seen:
                raise ValueError(f"rack id {rack!r} appears more than once")
            seen.add(rack)
        return racks


class AgentSection(_Section):
    platform_url: str = Field(description="Base URL of the platform, http(s)://host[:port]")
    state_dir: Path = Field(description="Key, identity and spool live here (keep it private).")
    interval_s: float = Field(default=10.0, gt=0, le=3600)
    probe_deadline_s: float | None = Field(
        default=None, gt=0, description="Default per-probe deadline; 0.8 × interval_s if unset."
    )
    metrics_listen: str = Field(
        default=DEFAULT_METRICS_LISTEN,
        description="host:port of the agent's /metrics; empty string turns it off.",
    )
    spool_max_bytes: int = Field(default=2 << 30, gt=0)
    upload_timeout_s: float = Field(default=30.0, gt=0, le=600)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)

    @field_validator("platform_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url.rstrip("/")

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value

    @property
    def deadline_s(self) -> float:
        return self.probe_deadline_s or 0.8 * self.interval_s


def parse_listen(value: str) -> tuple[str, int]:
    """``"0.0.0.0:9478"``, ``":9478"`` or ``"[::1]:9478"`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1..65535, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One configured probe section, validated but not yet started."""

    kind: str
    index: int  # position among the sections of the same kind
    enabled: bool
    deadline_s: float
    settings: BaseModel  # the probe's own validated config model
    probe_class: str  # "module:attribute"
    raw: Mapping[str, Any]  # the section as written, for `agent check` to say where it reads

    @property
    def key(self) -> str:
        return f"probes.{self.kind}[{self.index}]"

    def build(self) -> Probe:
        return _resolve(self.probe_class)(self.settings)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path
    site: SiteSection
    agent: AgentSection
    probes: tuple[ProbeSpec, ...]
    executor: Mapping[str, Any] | None = None  # the [executor] table: run leased jobs here


def load_config(path: Path, kinds: Mapping[str, tuple[str, str]] = PROBE_KINDS) -> AgentConfig:
    """Read and validate the whole file; raise ConfigError listing every mistake."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data, path, kinds)


def parse_config(
    data: Mapping[str, Any], path: Path, kinds: Mapping[str, tuple[str, str]] = PROBE_KINDS
) -> AgentConfig:
    problems: list[str] = []
    for key in sorted(set(data) - {"site", "agent", "probes", "executor"}):
        problems.append(
            f"{path}:{key}: unknown section; expected one of agent, executor, probes, site")
    site = _validate(SiteSection, data.get("site"), "site", path, problems)
    agent = _validate(AgentSection, data.get("agent"), "agent", path, problems)
    probes = _probes(data.get("probes", {}), path, kinds, agent, problems)
    executor = data.get("executor")
    if executor is not None:
        problems += _executor_problems(executor, path)
    if problems:
        raise ConfigError(problems)
    assert site is not None and agent is not None
    if not agent.state_dir.is_absolute():
        agent = agent.model_copy(update={"state_dir": path.parent.resolve() / agent.state_dir})
    return AgentConfig(path=path, site=site, agent=agent, probes=tuple(probes),
                       executor=executor)


def _executor_problems(section: Any, path: Path) -> list[str]:
    """Check an ``[executor]`` table (the lease worker and its executor) without starting it."""
    from agents.executors import ExecutorConfigError, UnknownExecutor
    from agents.worker import check_worker_section

    if not isinstance(section, dict):
        return [f"{path}:executor: expected a table, got {_show(section)}"]
    try:
        check_worker_section(section)
    except ExecutorConfigError as exc:
        return [f"{path}:{line}" for line in exc.problems]
    except UnknownExecutor as exc:
        return [f"{path}:executor.kind: {exc}"]
    return []


def _probes(
    section: Any,
    path: Path,
    kinds: Mapping[str, tuple[str, str]],
    agent: AgentSection | None,
    problems: list[str],
) -> list[ProbeSpec]:
    if not isinstance(section, dict):
        problems.append(f"{path}:probes: expected a table of probe kinds, got {_show(section)}")
        return []
    specs: list[ProbeSpec] = []
    for kind, entries in section.items():
        if kind not in kinds:
            problems.append(
                f"{path}:probes.{kind}: unknown probe kind; expected one of "
                f"{', '.join(sorted(kinds))}"
            )
            continue
        tables = [entries] if isinstance(entries, dict) else entries
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            problems.append(
                f"{path}:probes.{kind}: expected [[probes.{kind}]] tables, got {_show(entries)}"
            )
            continue
        model_path, class_path = kinds[kind]
        for index, table in enumerate(tables):
            spec = _probe_spec(kind, index, table, model_path, class_path, path, agent, problems)
            if spec is not None:
                specs.append(spec)
    return specs


def _probe_spec(
    kind: str,
    index: int,
    table: dict[str, Any],
    model_path: str,
    class_path: str,
    path: Path,
    agent: AgentSection | None,
    problems: list[str],
) -> ProbeSpec | None:
    key = f"probes.{kind}[{index}]"
    own = {k: v for k, v in table.items() if k not in AGENT_PROBE_KEYS}
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"{path}:{key}.enabled: expected true or false, got {_show(enabled)}")
    deadline = table.get("deadline_s", agent.deadline_s if agent else 1.0)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
        problems.append(
            f"{path}:{key}.deadline_s: expected a number of seconds > 0, got {_show(deadline)}"
        )
    try:
        model = _resolve(model_path)
    except ImportError as exc:
        problems.append(f"{path}:{key}: probe kind {kind!r} is not installed here: {exc}")
        return None
    settings = _validate(model, own, key, path, problems)
    if settings is None or not isinstance(enabled, bool) or not isinstance(deadline, int | float):
        return None
    return ProbeSpec(kind, index, enabled, float(deadline), settings, class_path, table)


def _validate(
    model: type[BaseModel], value: Any, key: str, path: Path, problems: list[str]
) -> Any:
    if value is None:
        problems.append(f"{path}:{key}: expected a [{key}] section, got nothing")
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(f"{path}:{_dotted(key, error['loc'])}: {_explain(error, model)}")
        return None


def _dotted(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# pydantic's phrasing -> the ``expected ..., got ...`` form operators see.
_PYDANTIC_PHRASES = (
    ("Input should be ", "expected "),
    ("String should match ", "expected a string matching "),
    ("String should have ", "expected a string with "),
    ("List should have ", "expected a list with "),
    ("Dictionary should have ", "expected a table with "),
)


def _explain(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    """An operator's message for one validation error. A value is shown only where it cannot be
    a secret: never for an unknown key (a misspelt ``pasword`` holds a password all the same),
    nor for a key whose name says secret; the message lands on terminals and in the journal."""
    kind, message = error["type"], str(error["msg"])
    if kind == "missing":
        return "expected a value, got nothing"
    name = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(name, sorted(_field_names(model)), n=1, cutoff=0.6)
        return "unknown key" + (f"; did you mean {near[0]!r}?" if near else "")
    shown = "a value not shown (a secret)" if _SECRET.search(name) else _show(error["input"])
    for prefix, expected in _PYDANTIC_PHRASES:
        if message.startswith(prefix):
            return f"{expected}{message.removeprefix(prefix)}, got {shown}"
    message = message.removeprefix("Value error, ")
    if message.startswith("expected "):
        return message
    return f"{message} (got {shown})"


_SECRET = re.compile(r"pass|secret|token|key|community|priv|auth|credential", re.IGNORECASE)


def _field_names(model: type[BaseModel]) -> set[str]:
    """Every key a config section and the tables in it accept: what an unknown key may be a
    misspelling of."""
    names: set[str] = set()
    pending: list[Any] = [model]
    seen: set[Any] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            for field_name, info in current.model_fields.items():
                names.add(info.alias or field_name)
                pending.append(info.annotation)
        pending.extend(typing.get_args(current))
    return names


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _resolve(dotted: str) -> Any:
    module_name, _, attribute = dotted.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"{module_name} has no {attribute}") from None
