"""Deployment files: systemd units, the agent config example, Kubernetes, compose, Dockerfile.

Nothing here can be started for real on a CI machine (no systemd as init, no Kubernetes, no
Docker daemon), so these tests check what can be checked without them and cross-check the files
against the code they run: the CLI commands exist, every setting is one the platform reads,
every agent config loads with ``agents.config.load_config``, and mounts, ports, secrets and
paths agree between files. ``systemd-analyze verify`` and ``promtool check config`` run where
they are installed.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"


# --- shared checks ---------------------------------------------------------------------------

def cli_command(*words: str) -> Any:
    """The click command ``jinsuan <words>``, or None when the CLI has no such command."""
    import typer

    from jinsuan.cli import app

    command = typer.main.get_command(app)
    for word in words:
        commands = getattr(command, "commands", {})
        if word not in commands:
            return None
        command = commands[word]
    return command


def check_command(argv: list[str]) -> str | None:
    """Why ``jinsuan <argv>`` is not a command the CLI has, or None when it is."""
    words = list(itertools.takewhile(lambda w: not w.startswith("-"), argv))
    options = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
    command = cli_command(*words)
    if command is None:
        return f"`jinsuan {' '.join(words)}` is not a command"
    known = {opt for param in command.params for opt in param.opts}
    if options - known:
        return f"`jinsuan {' '.join(words)}` has no option {sorted(options - known)}"
    return None


def settings_env_names() -> set[str]:
    """Every environment variable ``jinsuan.kernel.settings.Settings`` reads."""
    from jinsuan.kernel.settings import Settings

    names = {"DATABASE_URL"}
    for name, field in Settings.model_fields.items():
        names.add(f"JINSUAN_{name.upper()}")
        alias = field.validation_alias
        names |= set(getattr(alias, "choices", []))
    return names


def check_settings(env: dict[str, Any], where: str) -> None:
    unknown = {k for k in env if k.startswith("JINSUAN_") or k == "DATABASE_URL"}
    unknown -= settings_env_names()
    assert not unknown, f"{where}: the platform reads no setting {sorted(unknown)}"


def meters_by_role(config: Any) -> dict[str, list[tuple[str, list[str]]]]:
    """``role -> [(meter id, racks)]`` over the Modbus, SNMP and Redfish probes of a config."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for spec in config.probes:
        settings = spec.settings
        for meter in (getattr(settings, "meters", None) or getattr(settings, "devices", None)
                      or []):
            found.setdefault(str(meter.role), []).append((meter.id, list(meter.racks)))
        for bmc in getattr(settings, "bmcs", None) or []:
            found.setdefault("it", []).append((bmc.id, list(bmc.racks)))
    return found


def check_counts_each_rack_once(config: Any, where: str) -> None:
    racks = [rack for _, rs in meters_by_role(config).get("it", []) for rack in rs]
    twice = {r for r in racks if racks.count(r) > 1}
    assert not twice, f"{where}: racks {sorted(twice)} are fed by two IT meters"


# --- systemd ---------------------------------------------------------------------------------

def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections of keys that may repeat; comments and blanks skipped."""
    unit: dict[str, dict[str, list[str]]] = {}
    section = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path}:{number}: not a key=value line"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: dict[str, dict[str, list[str]]], key: str) -> str:
    (value,) = unit["Service"][key]
    return value


def exec_argv(unit: dict[str, dict[str, list[str]]]) -> list[str]:
    """The unit's command as ``jinsuan`` arguments; ``jinsuan-agent ...`` is the lean entry
    point for ``jinsuan agent run ...`` (same options, without the CLI's libraries)."""
    argv = one(unit, "ExecStart").split()
    if argv[0].endswith("/jinsuan-agent"):
        return ["agent", "run", *argv[1:]]
    assert argv[0].endswith("/jinsuan"), argv
    return argv[1:]


def test_the_lean_agent_entry_point_takes_the_cli_options() -> None:
    from agents.daemon import main

    for args in (["--config", "/nonexistent/site.toml"],
                 ["--config", "/nonexistent/site.toml", "--log-level", "WARNING"]):
        assert main(args) == 2  # parsed; then the missing file is a config error


def referenced_commands() -> dict[str, list[str]]:
    """Every ``jinsuan ...`` command line the deployment files run, by where it is."""
    found = {}
    for name in ("jinsuan-platform.service", "jinsuan-agent.service"):
        found[name] = exec_argv(read_unit(SYSTEMD / name))
    for kind, name in (("Deployment", "jinsuan-platform"), ("DaemonSet", "jinsuan-agent-gpu"),
                       ("StatefulSet", "jinsuan-agent-meters")):
        workload = k8s(kind, name)
        for c in workload["spec"]["template"]["spec"]["containers"]:
            found[f"{kind} {name} {c['name']}"] = c["command"][1:]
    script = k8s("ConfigMap", "jinsuan-agent-enrol")["data"]["enrol.sh"]
    (line,) = [x for x in script.replace("\\\n", " ").splitlines() if "jinsuan agent" in x]
    argv = line.split()
    start = argv.index("jinsuan") + 1
    found["enrol.sh"] = argv[start:start + 2] + [a for a in argv if a.startswith("--")]
    found["compose platform"] = compose()["services"]["platform"]["command"][1:]
    for target, stage in stages().items():
        for word, rest in stage:
            if word == "CMD":
                found[f"Dockerfile {target}"] = yaml.safe_load(rest)[1:]
    return found


def test_every_referenced_command_exists() -> None:
    commands = referenced_commands()
    assert len(commands) >= 9
    pending = []
    for where, argv in commands.items():
        problem = check_command(argv)
        if problem and argv[0] == "agent" and cli_command("agent") is None:
            pending.append(where)
        else:
            assert problem is None, f"{where}: {problem}"
    if pending:
        pytest.skip(f"the CLI has no `jinsuan agent` group yet; unchecked: {pending}")


def test_platform_unit() -> None:
    unit = read_unit(SYSTEMD / "jinsuan-platform.service")
    argv = exec_argv(unit)
    assert argv == ["serve"]
    assert one(unit, "EnvironmentFile") == "/etc/jinsuan/platform.env"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "DynamicUser") == "yes" or one(unit, "User")
    state = one(unit, "StateDirectory")
    env = dict(e.split("=", 1) for e in unit["Service"].get("Environment", []))
    check_settings(env, "jinsuan-platform.service")
    assert env["JINSUAN_DATA_DIR"] == f"/var/lib/{state}"


def test_platform_env_example_holds_only_real_settings() -> None:
    env = {}
    for line in (SYSTEMD / "platform.env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert "DATABASE_URL" in env
    check_settings(env, "platform.env.example")
    from jinsuan.kernel.settings import Settings

    settings = Settings(**{k.removeprefix("JINSUAN_").lower(): v for k, v in env.items()
                           if k.startswith("JINSUAN_")}, database_url=env["DATABASE_URL"])
    assert settings.host == env["JINSUAN_HOST"]


def test_agent_unit_and_its_config_agree() -> None:
    from agents.config import load_config

    unit = read_unit(SYSTEMD / "jinsuan-agent.service")
    argv = exec_argv(unit)
    assert argv[:2] == ["agent", "run"]
    config_path = argv[argv.index("--config") + 1]
    assert config_path == "/etc/jinsuan/site.toml"
    assert one(unit, "Restart") == "always"
    assert one(unit, "ProtectSystem") == "strict"
    state = one(unit, "StateDirectory")
    config = load_config(SYSTEMD / "site.toml.example")
    # The spool, key and identity live where systemd keeps state across restarts.
    assert config.agent.state_dir == Path("/var/lib") / state
    user = one(unit, "User")
    sysusers = (SYSTEMD / "jinsuan-agent.sysusers.conf").read_text(encoding="utf-8")
    assert re.search(rf"^u\s+{re.escape(user)}\s", sysusers, re.MULTILINE)


def test_site_example_meters_the_site_once() -> None:
    from agents.config import load_config

    config = load_config(SYSTEMD / "site.toml.example")
    roles = meters_by_role(config)
    assert roles.get("facility") and roles.get("it")
    check_counts_each_rack_once(config, "site.toml.example")
    it_racks = {r for _, racks in roles["it"] for r in racks}
    assert it_racks == set(config.site.racks), "every rack should have its IT meter"


def test_config_loader_reports_a_broken_example(tmp_path: Path) -> None:
    """The check above has teeth: the loader refuses a mistake in a copy of the example."""
    from agents.config import ConfigError, load_config

    text = (SYSTEMD / "site.toml.example").read_text(encoding="utf-8")
    broken = tmp_path / "site.toml"
    broken.write_text(text.replace('measures = "ups_output"', 'measures = "ups"', 1))
    with pytest.raises(ConfigError, match=r"measures"):
        load_config(broken)


def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    installed = Path(sys.executable).parent / "jinsuan"
    assert installed.exists(), "the jinsuan command is not installed in this environment"
    for name in ("jinsuan-platform.service", "jinsuan-agent.service"):
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace("/opt/jinsuan/bin/jinsuan", str(installed)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(p) for p in sorted(tmp_path.glob("*.service")))],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- Kubernetes ------------------------------------------------------------------------------

def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                yield path, document


def k8s(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for _, d in k8s_documents()
                if d["kind"] == kind and d.get("metadata", {}).get("name") == name]
    return found


def test_every_manifest_is_well_formed() -> None:
    documents = list(k8s_documents())
    assert len(documents) >= 10
    for path, document in documents:
        where = f"{path.relative_to(ROOT)} {document.get('kind')}"
        assert document.get("apiVersion") and document.get("kind"), where
        if document["kind"] == "Kustomization":
            for resource in document["resources"]:
                assert (path.parent / resource).is_file(), f"{where}: no {resource}"
            continue
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", document["metadata"]["name"])
        spec = document.get("spec", {})
        if "template" in spec:
            check_workload(document, where)


KUBERNETES_VERSION = "1.31"  # the oldest release still in upstream support when written


def test_every_kubernetes_object_validates_against_its_schema() -> None:
    """Each object against the OpenAPI schema of its kind, strictly (an unknown or misspelt
    field is an error), as ``kubectl apply --validate=strict`` would on a real cluster."""
    import kubernetes_validate

    for path, document in k8s_documents():
        if document["kind"] == "Kustomization":  # kustomize's own file, not a cluster object
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {document['kind']}: {exc.message}")

    deployment = k8s("Deployment", "jinsuan-platform")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


def check_workload(document: dict[str, Any], where: str) -> None:
    spec = document["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items(), f"{where}: selector"
    volumes = {v["name"] for v in pod.get("volumes", [])}
    volumes |= {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    for container in pod.get("initContainers", []) + pod["containers"]:
        assert container["image"], where
        assert container.get("command"), f"{where} {container['name']}: no command"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{where} {container['name']}: {mount['name']}"
    for container in pod["containers"]:
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, f"{where} {container['name']} runs as root"
        assert context.get("allowPrivilegeEscalation") is False, where
    annotations = spec["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true":
        ports = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in ports, f"{where}: scrape port"


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"]
                if c["name"] == name]
    return found


def test_platform_deployment() -> None:
    deployment = k8s("Deployment", "jinsuan-platform")
    assert deployment["spec"]["replicas"] == 2
    platform = container(deployment, "platform")
    assert platform["command"][0] == "jinsuan"
    assert platform["command"][1:] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in platform["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = platform[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] in ports, probe
    (database,) = [e for e in platform["env"] if e["name"] == "DATABASE_URL"]
    secret = database["valueFrom"]["secretKeyRef"]
    example = k8s("Secret", secret["name"])
    assert secret["key"] in example["stringData"]
    (config_ref,) = platform["envFrom"]
    config = k8s("ConfigMap", config_ref["configMapRef"]["name"])["data"]
    check_settings(config, "platform ConfigMap")
    assert int(config["JINSUAN_PORT"]) == ports["http"]
    assert config["JINSUAN_HOST"] == "0.0.0.0"
    mounts = {m["mountPath"] for m in platform["volumeMounts"]}
    assert config["JINSUAN_DATA_DIR"] in mounts, "read-only root: the data dir needs a volume"
    service = k8s("Service", "jinsuan-platform")
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items())
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)


def agent_config(workload: dict[str, Any], tmp_path: Path) -> Any:
    """Load the site.toml the workload's agent container mounts, from the example secret."""
    from agents.config import load_config

    agent = container(workload, "agent")
    assert agent["command"][0] == "jinsuan"
    config_path = agent["command"][agent["command"].index("--config") + 1]
    (mount,) = [m for m in agent["volumeMounts"] if m["mountPath"] == config_path]
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    secret = k8s("Secret", volumes[mount["name"]]["secret"]["secretName"])
    path = tmp_path / mount["subPath"]
    path.write_text(secret["stringData"][mount["subPath"]], encoding="utf-8")
    config = load_config(path)
    mounted = {m["mountPath"] for m in agent["volumeMounts"]}
    assert str(config.agent.state_dir) in mounted, "the spool must live on a kept volume"
    return config


def test_gpu_daemonset(tmp_path: Path) -> None:
    daemonset = k8s("DaemonSet", "jinsuan-agent-gpu")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    agent = container(daemonset, "agent")
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "resources" not in agent or "nvidia.com/gpu" not in str(agent["resources"])
    config = agent_config(daemonset, tmp_path)
    assert {spec.kind for spec in config.probes} == {"nvml"}, "meters belong to one agent only"
    (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
    assert state["hostPath"]["path"] == str(config.agent.state_dir)


def test_meter_statefulset(tmp_path: Path) -> None:
    statefulset = k8s("StatefulSet", "jinsuan-agent-meters")
    assert statefulset["spec"]["replicas"] == 1, "two meter agents would count energy twice"
    config = agent_config(statefulset, tmp_path)
    assert "nvml" not in {spec.kind for spec in config.probes}
    roles = meters_by_role(config)
    assert roles.get("facility") and roles.get("it")
    check_counts_each_rack_once(config, "meters.toml")


def test_enrolment_script_is_valid_shell_with_its_variables_set(tmp_path: Path) -> None:
    script = k8s("ConfigMap", "jinsuan-agent-enrol")["data"]["enrol.sh"]
    path = tmp_path / "enrol.sh"
    path.write_text(script, encoding="utf-8")
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)
    for kind in ("DaemonSet", "StatefulSet"):
        workload = next(d for _, d in k8s_documents() if d["kind"] == kind)
        (enrol,) = workload["spec"]["template"]["spec"]["initContainers"][-1:]
        env = {e["name"] for e in enrol["env"]}
        assert set(re.findall(r"\$\{?(\w+)", script)) <= env | {"token_file"}


# --- compose ---------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path, for bind mounts (relative to the compose file)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def test_compose_services() -> None:
    spec = compose()
    services = spec["services"]
    assert {"db", "platform", "prometheus", "grafana"} <= set(services)
    assert services["db"]["image"].startswith("timescale/timescaledb:")
    platform = services["platform"]
    assert platform["depends_on"]["db"]["condition"] == "service_healthy"
    assert platform["build"]["target"] == "platform"
    assert (COMPOSE.parent / platform["build"]["context"] / platform["build"]["dockerfile"]
            ).resolve() == DOCKERFILE
    check_settings(platform["environment"], "compose platform")
    assert platform["environment"]["DATABASE_URL"].split("@")[1].startswith("db:5432/")
    named = set(spec["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in named, f"{name}: volume {source} is not declared"
        for path in bind_mounts(service).values():
            assert path.exists(), f"{name}: {path} does not exist"
        depends = service.get("depends_on") or {}
        for dependency in depends:
            assert dependency in services
            condition = depends[dependency] if isinstance(depends, dict) else {}
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_compose_variables_are_in_the_env_example() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)", text))
    example = (COMPOSE.parent / "env.example").read_text(encoding="utf-8")
    defined = {line.split("=")[0] for line in example.splitlines()
               if line and not line.startswith("#")}
    assert used and used <= defined, used - defined


def test_compose_grafana_gets_the_provisioning_and_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ROOT / "dashboards" / "provisioning"
    provider = yaml.safe_load(
        (ROOT / "dashboards/provisioning/dashboards/jinsuan.yaml").read_text(encoding="utf-8"))
    (entry,) = provider["providers"]
    assert mounts[entry["options"]["path"]] == ROOT / "dashboards"
    datasources = "\n".join(
        line for line in (ROOT / "dashboards/provisioning/datasources/jinsuan.yaml")
        .read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#"))
    needed = set(re.findall(r"\$\{(\w+)\}", datasources))
    assert needed and needed <= set(grafana["environment"]), needed - set(grafana["environment"])
    assert grafana["environment"]["JINSUAN_GRAFANA_DB_USER"] == "jinsuan_grafana"
    readonly = (ROOT / "deploy/postgres/grafana-readonly.sql").read_text(encoding="utf-8")
    assert "jinsuan_grafana" in readonly
    role = compose()["services"]["grafana-role"]
    assert bind_mounts(role)["/sql"] == ROOT / "deploy" / "postgres"
    assert "/sql/grafana-readonly.sql" in role["command"]


def test_compose_prometheus_scrapes_the_platform(tmp_path: Path) -> None:
    prometheus = compose()["services"]["prometheus"]
    config_path = bind_mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "jinsuan-platform"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    platform = compose()["services"]["platform"]
    assert host == "platform" and port == platform["environment"]["JINSUAN_PORT"]
    # The per-site figures are scraped with a key of the 'metrics' role, read from a file the
    # compose mounts (promtool wants it to exist: a stand-in here).
    (sites,) = [j for j in config["scrape_configs"] if j["job_name"] == "jinsuan-sites"]
    assert sites["metrics_path"] == "/metrics/sites"
    assert sites["static_configs"][0]["targets"] == [target]
    key_file = sites["authorization"]["credentials_file"]
    assert Path(key_file).parent in {Path(c) for c in bind_mounts(prometheus)}
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    (tmp_path / "metrics-key").write_text("jsk_stand_in\n")
    checked = tmp_path / "prometheus.yml"
    checked.write_text(config_path.read_text(encoding="utf-8").replace(
        key_file, str(tmp_path / "metrics-key")), encoding="utf-8")
    result = subprocess.run([promtool, "check", "config", str(checked)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile ------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            current = []
            found[rest.split()[-1]] = current
        current.append((word, rest))
    return found


def test_dockerfile_targets() -> None:
    built = stages()
    assert {"platform", "agent"} <= set(built)
    for target, extra, argv in (("platform", "server", ["jinsuan", "serve"]),
                                ("agent", "agent", ["jinsuan", "agent", "run"])):
        (copy,) = [r for w, r in built[target] if w == "COPY" and r.startswith("--from=")]
        source_stage = copy.split()[0].removeprefix("--from=")
        runs = " ".join(r for w, r in built[source_stage] if w == "RUN")
        assert f'".[{extra}]"' in runs, f"{target} does not install the {extra} extra"
        other = {"server": "agent", "agent": "server"}[extra]
        assert f".[{other}]" not in runs
        (cmd,) = [r for w, r in built[target] if w == "CMD"]
        command = yaml.safe_load(cmd)
        assert command[: len(argv)] == argv
        assert any(w == "USER" and not r.startswith("0") for w, r in built[target])


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = [r.split()[:-1] for w, r in dockerfile_instructions()
              if w == "COPY" and not r.startswith("--from=")]
    sources = [s for group in copied for s in group]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded by the .dockerignore"
    # The image installs the packages pyproject.toml declares.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"][
        "include"]}
    assert packages <= set(sources)
