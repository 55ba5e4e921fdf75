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
import os
import re
import shutil
import subprocess
import sys
import time
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
        pod = k8s(kind, name)["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            if c["command"][0] == "jinsuan":
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
            # Every manifest beside it is applied, but the examples of secrets to fill in.
            beside = {p.name for p in path.parent.glob("*.yaml")
                      if p != path and not p.name.endswith(".example.yaml")}
            assert beside <= set(document["resources"]), f"{where}: lists no {beside}"
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
        if (document["apiVersion"], document["kind"]) in CUSTOM_KINDS:  # an operator's kind
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {document['kind']}: {exc.message}")

    deployment = k8s("Deployment", "jinsuan-platform")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


# --- CloudNativePG's Cluster: the fields of its published CRD that deploy/kubernetes/database uses.
# Transcribed from cloudnative-pg v1.30.0, config/crd/bases/postgresql.cnpg.io_clusters.yaml
# (openAPIV3Schema of version v1; the 470 kB file itself is not vendored): each object below
# lists every field the CRD allows at its level, so a misspelt or invented field is refused as
# the API server would refuse it, with the types, enums and bounds of the fields set here.

QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
            r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def crd_object(allowed: str, required: tuple[str, ...] = (), **typed: Any) -> dict[str, Any]:
    """An object schema admitting exactly the fields ``allowed`` (space-separated), with the
    schemas ``typed`` for those the example sets."""
    names = allowed.split()
    assert set(typed) <= set(names), set(typed) - set(names)
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": {name: typed.get(name, {}) for name in names}}


def _quantities() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {
        "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY}]}}


_STRING, _BOOLEAN = {"type": "string"}, {"type": "boolean"}
_VOLUME = crd_object("pvcTemplate resizeInUseVolumes size storageClass", size=_STRING)
CNPG_CLUSTER_V1 = crd_object(
    "apiVersion kind metadata spec status", ("metadata", "spec"),
    apiVersion={"const": "postgresql.cnpg.io/v1"}, kind={"const": "Cluster"},
    metadata={"type": "object"},
    spec=crd_object(
        "affinity backup bootstrap certificates description enablePDB enableSuperuserAccess env"
        " envFrom ephemeralVolumeSource ephemeralVolumesSizeLimit externalClusters"
        " failoverDelay imageCatalogRef imageName imagePullPolicy imagePullSecrets"
        " inheritedMetadata instances livenessProbeTimeout logLevel managed maxSyncReplicas"
        " minSyncReplicas monitoring nodeMaintenanceWindow plugins podSecurityContext"
        " podSelectorRefs postgresGID postgresUID postgresql primaryLease primaryUpdateMethod"
        " primaryUpdateStrategy priorityClassName probes projectedVolumeTemplate replica"
        " replicationSlots resources schedulerName seccompProfile securityContext"
        " serviceAccountName serviceAccountTemplate smartShutdownTimeout startDelay stopDelay"
        " storage superuserSecret switchoverDelay tablespaces topologySpreadConstraints"
        " walStorage", ("instances",),
        description=_STRING,
        instances={"type": "integer", "minimum": 1},
        imageName=_STRING,
        postgresql=crd_object(
            "enableAlterSystem extensions ldap parameters pg_hba pg_ident promotionTimeout"
            " shared_preload_libraries syncReplicaElectionConstraint synchronous",
            parameters={"type": "object", "additionalProperties": _STRING},
            synchronous=crd_object(
                "dataDurability failoverQuorum maxStandbyNamesFromCluster method number"
                " standbyNamesPost standbyNamesPre", ("method", "number"),
                method={"enum": ["any", "first"]},
                number={"type": "integer", "exclusiveMinimum": 0},  # CEL: self > 0
                dataDurability={"enum": ["required", "preferred"]})),
        bootstrap=crd_object(
            "initdb pg_basebackup recovery",
            initdb=crd_object(
                "builtinLocale dataChecksums database encoding icuLocale icuRules import locale"
                " localeCType localeCollate localeProvider options owner postInitApplicationSQL"
                " postInitApplicationSQLRefs postInitSQL postInitSQLRefs postInitTemplateSQL"
                " postInitTemplateSQLRefs secret walSegmentSize",
                database=_STRING, owner=_STRING, dataChecksums=_BOOLEAN,
                secret=crd_object("name", ("name",), name=_STRING))),
        primaryUpdateStrategy={"enum": ["unsupervised", "supervised"]},
        primaryUpdateMethod={"enum": ["switchover", "restart"]},
        affinity=crd_object(
            "additionalPodAffinity additionalPodAntiAffinity enablePodAntiAffinity nodeAffinity"
            " nodeSelector podAntiAffinityType tolerations topologyKey",
            enablePodAntiAffinity=_BOOLEAN, topologyKey=_STRING,
            # a string in the CRD; its description allows these two
            podAntiAffinityType={"enum": ["preferred", "required"]}),
        storage=_VOLUME,
        walStorage=_VOLUME,
        resources=crd_object("claims limits requests", limits=_quantities(),
                             requests=_quantities())))

# apiVersion and kind of every object that is an operator's custom resource, and its schema.
CUSTOM_KINDS: dict[tuple[str, str], dict[str, Any]] = {
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER_V1,
}


def test_every_custom_resource_validates_against_its_operators_crd() -> None:
    """The operator's kinds (not in the Kubernetes schemas): their fields against the CRD, their
    metadata against Kubernetes' ObjectMeta, which every kind shares."""
    import jsonschema
    import kubernetes_validate

    found = [(path, d) for path, d in k8s_documents()
             if (d["apiVersion"], d["kind"]) in CUSTOM_KINDS]
    assert found, "no custom resource: the database cluster is missing"
    for path, document in found:
        where = f"{path.relative_to(ROOT)} {document['kind']}"
        schema = CUSTOM_KINDS[document["apiVersion"], document["kind"]]
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(document)]
        assert not errors, f"{where}: {errors}"
        carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
        kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)

    cluster = k8s("Cluster", "jinsuan-db")
    validator = jsonschema.Draft7Validator(CNPG_CLUSTER_V1)
    for broken in ({**cluster, "spec": {**cluster["spec"], "instance": 3}},
                   {**cluster, "spec": {**cluster["spec"], "postgresql": {
                       "synchronous": {"method": "quorum", "number": 1}}}},
                   {**cluster, "spec": {**cluster["spec"], "postgresql": {
                       "synchronous": {"method": "any", "number": 0}}}}):
        assert not validator.is_valid(broken), broken["spec"]


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
    paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in paths.items():
        get = platform[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ports, probe
    from prometheus_client import CollectorRegistry

    from collectors.exposition import router

    assert set(paths.values()) <= {r.path for r in router(CollectorRegistry()).routes}
    # Readiness is judged before liveness gives up: a replica whose database is away is taken
    # out of rotation and left running, not restarted.
    ready, live = platform["readinessProbe"], platform["livenessProbe"]
    assert (ready["periodSeconds"] * ready.get("failureThreshold", 3)
            < live["periodSeconds"] * live.get("failureThreshold", 3))
    for probe in paths:
        timeout = platform[probe].get("timeoutSeconds", 1)
        assert timeout < platform[probe].get("periodSeconds", 10), probe
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


def test_platform_migrates_once_before_it_serves_and_drains_before_it_stops() -> None:
    from jinsuan.contract.leasewire import MAX_LEASE_WAIT_S

    deployment = k8s("Deployment", "jinsuan-platform")
    pod = deployment["spec"]["template"]["spec"]
    platform = container(deployment, "platform")
    (migrate,) = pod["initContainers"]
    assert migrate["command"] == ["jinsuan", "migrate"]
    assert migrate["image"] == platform["image"], "the schema of the version that serves"
    # The same database and settings as the platform, by the same references.
    assert migrate["env"] == [e for e in platform["env"] if e["name"] == "DATABASE_URL"]
    assert migrate["envFrom"] == platform["envFrom"]
    mounts = {m["mountPath"]: m["name"] for m in migrate["volumeMounts"]}
    assert {m["mountPath"]: m["name"] for m in platform["volumeMounts"]}.items() >= mounts.items()
    context = {**pod["securityContext"], **migrate["securityContext"]}
    assert context["runAsNonRoot"] and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    # Stopping: the preStop pause, then the longest request the platform holds (a lease long
    # poll) with room to spare for the background jobs to stop.
    (pause,) = [int(a) for a in platform["lifecycle"]["preStop"]["exec"]["command"][1:]]
    assert platform["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= pause + MAX_LEASE_WAIT_S + 10
    # A rolling update never takes the last ready replica away.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert k8s("PodDisruptionBudget", "jinsuan-platform")["spec"]["minAvailable"] >= 1


def test_the_database_cluster_is_highly_available_and_the_platform_points_at_its_primary(
) -> None:
    from urllib.parse import parse_qs, urlsplit

    cluster = k8s("Cluster", "jinsuan-db")
    spec = cluster["spec"]
    assert spec["instances"] == 3
    synchronous = spec["postgresql"]["synchronous"]
    assert synchronous["number"] >= 1 and synchronous["dataDurability"] == "required"
    assert synchronous["number"] < spec["instances"], "more standbys than the cluster has"
    assert spec["affinity"]["enablePodAntiAffinity"] is True
    database = yaml.safe_load((KUBERNETES / "database" / "kustomization.yaml").read_text())
    platform = yaml.safe_load((KUBERNETES / "platform" / "kustomization.yaml").read_text())
    assert database["namespace"] == platform["namespace"]
    namespace = database["namespace"]
    # DATABASE_URL goes to the read-write service the operator keeps on the primary, as the
    # owner the cluster is bootstrapped with, verifying the server against the cluster's CA.
    url = urlsplit(k8s("Secret", "jinsuan-database")["stringData"]["url"])
    assert url.hostname == f"{cluster['metadata']['name']}-rw.{namespace}.svc"
    initdb = spec["bootstrap"]["initdb"]
    assert url.path == f"/{initdb['database']}"
    owner = k8s("Secret", initdb["secret"]["name"])
    assert owner["type"] == "kubernetes.io/basic-auth"
    assert owner["stringData"]["username"] == initdb["owner"] == url.username
    assert owner["stringData"]["password"] == url.password
    query = parse_qs(url.query)
    assert query["sslmode"] == ["verify-full"]
    deployment = k8s("Deployment", "jinsuan-platform")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (ca_mount,) = [m for m in container(deployment, "platform")["volumeMounts"]
                   if query["sslrootcert"][0].startswith(m["mountPath"] + "/")]
    ca = volumes[ca_mount["name"]]["secret"]
    assert ca["secretName"] == f"{cluster['metadata']['name']}-ca"  # the operator's CA secret
    # Only the certificate: the operator keeps the CA's private key in the same secret.
    assert ca["items"] == [{"key": "ca.crt", "path": Path(query["sslrootcert"][0]).name}]


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


# --- the probes and `jinsuan migrate`, against a real database --------------------------------

@pytest.fixture
def platform_client(settings: Any, db: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from jinsuan.app import create_app
    from jinsuan.kernel.platform import Platform

    with TestClient(create_app(Platform(settings=settings, db=db))) as client:
        yield client


def test_ready_only_while_every_migration_of_this_version_is_applied(
        platform_client: Any, db: Any, conn: Any) -> None:
    from jinsuan.kernel.store.migrate import available
    from jinsuan.kernel.store.readiness import label

    assert platform_client.get("/readyz").json() == {"status": "ready"}
    known = available(db.flavour)
    gone = [known[1], known[-1]]  # one from the middle of the history and the newest
    conn.execute("DELETE FROM schema_migrations WHERE version = ANY(%s)",
                 ([step.version for step in gone],))
    answer = platform_client.get("/readyz")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "unavailable"
    named = set(re.findall(r"\d{4}_[a-z0-9_.]+", error["reason"]))
    assert named == {label(step) for step in gone}, error["reason"]
    assert "jinsuan migrate" in error["reason"]
    assert int(answer.headers["Retry-After"]) > 0
    # Liveness is the process alone: a replica waiting for its schema is not restarted.
    assert platform_client.get("/healthz").status_code == 200
    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s), (%s, %s)",
                 (gone[0].version, gone[0].name, gone[1].version, gone[1].name))
    assert platform_client.get("/readyz").status_code == 200


def test_not_ready_while_the_store_does_not_answer_and_ready_again_after(
        platform_client: Any, settings: Any, pg_admin_url: str) -> None:
    import psycopg

    name = psycopg.conninfo.conninfo_to_dict(settings.database_url)["dbname"]
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        # The database goes away as in a failover: every connection cut, no new one taken.
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            reasons = []
            for _ in range(3):  # the pool's cut connections first, then none to be had
                answer = platform_client.get("/readyz")
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "unavailable"
                reasons.append(answer.json()["error"]["reason"])
            assert "the store does not answer" in reasons, reasons
            assert platform_client.get("/healthz").status_code == 200
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + 60
    while (answer := platform_client.get("/readyz")).status_code != 200:
        assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
        time.sleep(0.2)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A database that was never migrated, dropped afterwards."""
    import uuid

    import psycopg

    name = f"jinsuan_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
        yield psycopg.conninfo.make_conninfo(**{**info, "dbname": name})
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def jinsuan_migrate(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "migrate"],
                            env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_migrates_at_once_apply_each_migration_once(empty_database_url: str) -> None:
    """Two replicas' init containers starting together on a new database, for real: both are
    made to wait on the migration lock at the same moment, then let go."""
    import psycopg

    from jinsuan.kernel.store.migrate import MIGRATION_LOCK, applied_flavour, available
    from jinsuan.kernel.store.readiness import label, missing_migrations

    with psycopg.connect(empty_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        runs = [jinsuan_migrate(empty_database_url) for _ in range(2)]
        try:
            deadline = time.monotonic() + 60
            while holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database"
                    "                 WHERE datname = current_database())").fetchone()[0] < 2:
                assert all(run.poll() is None for run in runs), "a migrate ended early"
                assert time.monotonic() < deadline, "both never waited on the lock"
                time.sleep(0.05)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        outputs = [run.communicate(timeout=120) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
    applied = [line.removeprefix("applied ") for out, _ in outputs for line in out.splitlines()
               if line.startswith("applied ")]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations"
                            " ORDER BY version").fetchall()
        flavour = applied_flavour([name for _, name in rows])
        assert missing_migrations(conn, flavour) == []
    known = [label(step) for step in available(flavour)]
    assert [f"{version:04d}_{name}" for version, name in rows] == known
    assert sorted(applied) == known, "each migration applied by exactly one of the two"
    summaries = sorted(out.splitlines()[-1].split(":")[0] for out, _ in outputs)
    assert summaries == ["nothing to apply", "schema complete"]


def test_migrate_says_what_failed_and_never_the_password() -> None:
    from servers import free_port

    password = "Sup3r-Secret-pw"
    for url, code in ((f"postgresql://jinsuan:{password}@127.0.0.1:{free_port()}/jinsuan", 1),
                      (f"host=127.0.0.1 password={password} dbname", 2)):
        run = jinsuan_migrate(url)
        out, err = run.communicate(timeout=60)
        assert run.returncode == code, out + err
        assert err.startswith("jinsuan migrate: ") and password not in out + err


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
