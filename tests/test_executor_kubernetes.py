"""The Kubernetes executor against a strict fake API server on loopback (no cluster runs in CI).

The fake serves exactly the endpoints the executor calls (batch/v1 Jobs: create, read, delete;
core/v1 Pods: list by label, read log), validates what it is sent the way the API server would
(required fields, names, label values, restart policy, quantities, resource names the cluster's
device plugins offer, no unknown fields), and answers with real Kubernetes object shapes. The
test plays the Job controller and kubelet: it moves a Job through pending → running → complete
or failed.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from executor_kit import make_lease

from agents.executors import ExecutorError, RunPhase, StartError, build_executor
from agents.executors.kubernetes import KubernetesExecutor, job_name, label_value
from jinsuan.contract.leasewire import LOG_TAIL_MAX_BYTES

DEVICE_PLUGINS = frozenset({"nvidia.com/gpu", "huawei.com/Ascend910"})
STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?{LABEL_NAME}$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")

# The fields the executor may send, per object; anything else is an unknown field (rejected, as
# the API server does under strict field validation).
ALLOWED = {
    "job": {"apiVersion", "kind", "metadata", "spec"},
    "metadata": {"name", "labels", "annotations"},
    "jobspec": {
        "backoffLimit",
        "activeDeadlineSeconds",
        "completions",
        "parallelism",
        "completionMode",
        "template",
    },
    "template": {"metadata", "spec"},
    "podspec": {
        "restartPolicy",
        "containers",
        "serviceAccountName",
        "schedulerName",
        "nodeSelector",
        "imagePullSecrets",
    },
    "container": {"name", "image", "command", "env", "workingDir", "resources"},
    "resources": {"limits", "requests"},
    "env": {"name", "value"},
}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Invalid(Exception):
    pass


def _only(obj: Any, kind: str, where: str) -> dict:
    if not isinstance(obj, dict):
        raise Invalid(f"{where}: expected an object")
    unknown = set(obj) - ALLOWED[kind]
    if unknown:
        raise Invalid(f"{where}: unknown field(s) {sorted(unknown)}")
    return obj


def validate_job(body: Any) -> None:
    job = _only(body, "job", "body")
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise Invalid("apiVersion/kind: expected batch/v1 Job")
    meta = _only(job.get("metadata"), "metadata", "metadata")
    if not DNS_LABEL.match(meta.get("name", "")):
        raise Invalid(f"metadata.name: {meta.get('name')!r} is not a DNS-1123 label")
    _labels(meta.get("labels", {}), "metadata.labels")
    spec = _only(job.get("spec"), "jobspec", "spec")
    for key in ("backoffLimit", "activeDeadlineSeconds", "completions", "parallelism"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise Invalid(f"spec.{key}: must be a non-negative integer")
    if spec.get("activeDeadlineSeconds") == 0:
        raise Invalid("spec.activeDeadlineSeconds: must be greater than 0")
    mode = spec.get("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        raise Invalid(f"spec.completionMode: {mode!r}")
    if mode == "Indexed" and spec.get("completions") is None:
        raise Invalid("spec.completions: required when completionMode is Indexed")
    template = _only(spec.get("template"), "template", "spec.template")
    _labels(
        _only(template.get("metadata", {}), "metadata", "template.metadata").get("labels", {}),
        "spec.template.metadata.labels",
    )
    pod = _only(template.get("spec"), "podspec", "spec.template.spec")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        raise Invalid("spec.template.spec.restartPolicy: a Job needs Never or OnFailure")
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        raise Invalid("spec.template.spec.containers: required")
    for i, container in enumerate(containers):
        where = f"spec.template.spec.containers[{i}]"
        _only(container, "container", where)
        if not DNS_LABEL.match(container.get("name", "")):
            raise Invalid(f"{where}.name: required DNS-1123 label")
        if not container.get("image"):
            raise Invalid(f"{where}.image: required")
        command = container.get("command", [])
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise Invalid(f"{where}.command: must be a list of strings")
        for env in container.get("env", []):
            _only(env, "env", f"{where}.env")
            if not ENV_NAME.match(env.get("name", "")):
                raise Invalid(f"{where}.env: invalid name {env.get('name')!r}")
        resources = _only(container.get("resources", {}), "resources", f"{where}.resources")
        for name, quantity in {
            **resources.get("limits", {}),
            **resources.get("requests", {}),
        }.items():
            if name not in STANDARD_RESOURCES | DEVICE_PLUGINS:
                raise Invalid(f"{where}.resources: no node offers resource {name!r}")
            if not isinstance(quantity, str) or not QUANTITY.match(quantity):
                raise Invalid(f"{where}.resources.{name}: invalid quantity {quantity!r}")


def _labels(labels: Any, where: str) -> None:
    if not isinstance(labels, dict):
        raise Invalid(f"{where}: expected a map")
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise Invalid(f"{where}: invalid label {key}={value!r}")


class FakeKubeApi:
    """The API server's state, and the controls a test uses to play the cluster."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.logs: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.unexpected: list[str] = []
        self.deleted: list[tuple[str, str | None]] = []  # (job, propagationPolicy)

    # -- the cluster's side --------------------------------------------------------------

    def job(self, name: str, namespace: str = "default") -> dict:
        return self.jobs[(namespace, name)]

    def run(self, name: str, namespace: str = "default", log: str = "") -> None:
        """The Job controller made its pods and the kubelet started their containers."""
        with self.lock:
            job = self.jobs[(namespace, name)]
            count = job["spec"].get("parallelism") or 1
            now = rfc3339(datetime.now(UTC))
            job["status"] = {"startTime": now, "active": count}
            for index in range(count):
                pod_name = f"{name}-{index}-x{index}z"
                self.pods[(namespace, pod_name)] = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": namespace,
                        "creationTimestamp": now,
                        "labels": {
                            **job["spec"]["template"]["metadata"]["labels"],
                            "job-name": name,
                            "batch.kubernetes.io/job-name": name,
                        },
                    },
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [
                            {
                                "name": "run",
                                "ready": True,
                                "restartCount": 0,
                                "image": "i",
                                "imageID": "",
                                "state": {"running": {"startedAt": now}},
                            }
                        ],
                    },
                }
                self.logs[pod_name] = log

    def finish(self, name: str, exit_code: int, log: str = "", reason: str | None = None) -> None:
        """All containers ended with ``exit_code``; the Job is Complete or Failed."""
        with self.lock:
            job = self.jobs[("default", name)]
            now = rfc3339(datetime.now(UTC))
            for (_, pod_name), pod in self.pods.items():
                if pod["metadata"]["labels"].get("job-name") != name:
                    continue
                status = pod["status"]
                started = status["containerStatuses"][0]["state"]["running"]["startedAt"]
                status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
                status["containerStatuses"][0]["state"] = {
                    "terminated": {
                        "exitCode": exit_code,
                        "startedAt": started,
                        "finishedAt": now,
                        "reason": "Completed" if exit_code == 0 else "Error",
                    }
                }
                self.logs[pod_name] += log
            count = job["status"].get("active", 1)
            if exit_code == 0:
                job["status"] = {
                    **job["status"],
                    "active": 0,
                    "succeeded": count,
                    "completionTime": now,
                    "conditions": [
                        {"type": "Complete", "status": "True", "lastTransitionTime": now}
                    ],
                }
            else:
                deadline = reason == "DeadlineExceeded"
                condition = {
                    "type": "Failed",
                    "status": "True",
                    "lastTransitionTime": now,
                    "reason": reason or "BackoffLimitExceeded",
                    "message": "Job was active longer than specified deadline"
                    if deadline
                    else "Job has reached the specified backoff limit",
                }
                job["status"] = {
                    **job["status"],
                    "active": 0,
                    "failed": count,
                    "conditions": [condition],
                }

    # -- the HTTP side -------------------------------------------------------------------

    def handle(self, method: str, url: str, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        with self.lock:
            self.requests.append((method, parts.path, query))
            route = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", parts.path)
            if route:
                namespace, name = route.groups()
                if method == "POST" and name is None:
                    return self._create(namespace, json.loads(body))
                if method == "GET" and name:
                    job = self.jobs.get((namespace, name))
                    return (
                        (200, job) if job else _status(404, "NotFound", f'jobs "{name}" not found')
                    )
                if method == "DELETE" and name:
                    return self._delete(namespace, name, query, body)
            route = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)/log)?", parts.path)
            if route and method == "GET":
                namespace, pod = route.groups()
                return (
                    self._pods(namespace, query)
                    if pod is None
                    else self._log(namespace, pod, query)
                )
        self.unexpected.append(f"{method} {url}")
        return _status(404, "NotFound", f"the fake does not serve {method} {parts.path}")

    def _create(self, namespace: str, body: dict) -> tuple[int, Any]:
        try:
            validate_job(body)
        except Invalid as exc:
            return _status(422, "Invalid", f"Job is invalid: {exc}")
        name = body["metadata"]["name"]
        if (namespace, name) in self.jobs:
            return _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        stored = json.loads(json.dumps(body))
        stored["metadata"].update(
            namespace=namespace,
            uid=f"uid-{len(self.jobs)}",
            creationTimestamp=rfc3339(datetime.now(UTC)),
        )
        stored["status"] = {}
        self.jobs[(namespace, name)] = stored
        return 201, stored

    def _delete(self, namespace: str, name: str, query: dict, body: bytes) -> tuple[int, Any]:
        policy = query.get("propagationPolicy", [None])[0]
        if body:
            policy = json.loads(body).get("propagationPolicy", policy)
        if policy not in ("Background", "Foreground", "Orphan", None):
            return _status(400, "BadRequest", f"propagationPolicy {policy!r}")
        job = self.jobs.pop((namespace, name), None)
        if job is None:
            return _status(404, "NotFound", f'jobs.batch "{name}" not found')
        self.deleted.append((name, policy))
        if policy != "Orphan":
            for key in [
                k for k, p in self.pods.items() if p["metadata"]["labels"]["job-name"] == name
            ]:
                del self.pods[key]
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    def _pods(self, namespace: str, query: dict) -> tuple[int, Any]:
        selector = query.get("labelSelector", [""])[0]
        key, _, value = selector.partition("=")
        if not key or not value:
            return _status(400, "BadRequest", f"labelSelector {selector!r}: expected key=value")
        items = [
            pod
            for (ns, _), pod in self.pods.items()
            if ns == namespace and pod["metadata"]["labels"].get(key) == value
        ]
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _log(self, namespace: str, pod: str, query: dict) -> tuple[int, Any]:
        found = self.pods.get((namespace, pod))
        if found is None:
            return _status(404, "NotFound", f'pods "{pod}" not found')
        container = query.get("container", [None])[0]
        if container != "run":
            return _status(400, "BadRequest", f"container {container!r} is not valid for {pod}")
        text = self.logs.get(pod, "")
        tail = query.get("tailLines", [None])[0]
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :])
        return 200, text


def _status(code: int, reason: str, message: str) -> tuple[int, Any]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@pytest.fixture
def kube() -> Iterator[tuple[FakeKubeApi, str]]:
    api = FakeKubeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, payload = api.handle(self.command, self.path, self.rfile.read(length))
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            kind = "text/plain" if isinstance(payload, str) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
    assert api.unexpected == [], "the executor called endpoints a cluster would not serve"


@pytest.fixture
def fake(kube: tuple[FakeKubeApi, str]) -> FakeKubeApi:
    return kube[0]


@pytest.fixture
def executor(kube: tuple[FakeKubeApi, str], tmp_path: Path) -> KubernetesExecutor:
    built = build_executor("kubernetes", {"host": kube[1], "namespace": "default"}, tmp_path)
    assert isinstance(built, KubernetesExecutor)
    return built


def test_start_creates_a_batch_v1_job_from_the_lease(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    lease = make_lease(
        ["python", "train.py"],
        image="registry.example.cn/train:1",
        env={"EPOCHS": "3"},
        workdir="/work",
        accelerators_per_task=2,
        accelerator_model="NVIDIA H100 80GB HBM3",
        max_runtime_s=3600,
    )
    name = executor.start(lease)
    assert name == f"jinsuan-{lease.run_id}"
    job = fake.job(name)
    assert job["metadata"]["labels"] == {
        "jinsuan/run": lease.run_id,
        "jinsuan/job": lease.job_id,
        "jinsuan/tenant": "tenant-a",
        "jinsuan/project": "proj-1",
    }
    assert job["metadata"]["annotations"] == {"jinsuan/run-id": lease.run_id}
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3600
    assert "completionMode" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.cn/train:1"
    assert container["command"] == ["python", "train.py"]
    assert container["workingDir"] == "/work"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["EPOCHS"] == "3" and env["JINSUAN_RUN_ID"] == lease.run_id


def test_ascend_leases_ask_for_huawei_npus_and_gangs_become_indexed_jobs(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    lease = make_lease(
        ["x"], image="i", tasks=3, accelerators_per_task=8, accelerator_model="Ascend910B3"
    )
    spec = fake.job(executor.start(lease))["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (3, 3, "Indexed")
    limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"huawei.com/Ascend910": "8"}


def test_a_job_moves_from_pending_to_running_to_succeeded(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    name = executor.start(make_lease(["echo", "hi"], image="busybox"))
    assert executor.poll(name).state is RunPhase.PENDING
    fake.run(name, log="starting\n")
    running = executor.poll(name)
    assert running.state is RunPhase.RUNNING
    assert running.started_at is not None and running.log_tail == "starting\n"
    fake.finish(name, 0, log="done\n")
    status = executor.poll(name)
    assert status.state is RunPhase.SUCCEEDED and status.exit_code == 0
    assert status.log_tail == "starting\ndone\n"
    assert status.started_at == running.started_at
    assert status.ended_at is not None and status.ended_at >= status.started_at
    tails = [q["tailLines"] for m, p, q in fake.requests if p.endswith("/log")]
    assert tails and all(t == ["500"] for t in tails)


def test_a_failed_container_reports_its_exit_code(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    name = executor.start(make_lease(["false"], image="busybox"))
    fake.run(name)
    fake.finish(name, 3, log="Traceback: boom\n")
    status = executor.poll(name)
    assert status.state is RunPhase.FAILED and status.exit_code == 3
    assert status.reason is not None and "BackoffLimitExceeded" in status.reason
    assert "boom" in status.log_tail


def test_the_active_deadline_fails_the_run_as_timed_out(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    name = executor.start(make_lease(["sleep", "1000"], image="busybox", max_runtime_s=5))
    fake.run(name)
    fake.finish(name, 137, reason="DeadlineExceeded")
    status = executor.poll(name)
    assert status.state is RunPhase.FAILED
    assert status.reason is not None and status.reason.startswith("timed out")


def test_start_is_idempotent(executor: KubernetesExecutor, fake: FakeKubeApi) -> None:
    lease = make_lease(["true"], image="busybox")
    assert executor.start(lease) == executor.start(lease)
    assert len(fake.jobs) == 1
    creates = [r for r in fake.requests if r[0] == "POST"]
    assert len(creates) == 2  # the second was refused 409 and resolved to the same Job


def test_cancel_deletes_the_job_in_the_background_and_reports_cancelled(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    name = executor.start(make_lease(["sleep", "1000"], image="busybox"))
    fake.run(name, log="working\n")
    executor.cancel(name)
    assert fake.deleted == [(name, "Background")]
    assert fake.jobs == {} and fake.pods == {}
    status = executor.poll(name)
    assert status.state is RunPhase.FAILED and status.reason == "cancelled"
    assert status.log_tail == "working\n"


def test_a_job_deleted_by_someone_else_is_reported_gone(
    executor: KubernetesExecutor, fake: FakeKubeApi
) -> None:
    name = executor.start(make_lease(["sleep", "1000"], image="busybox"))
    fake.handle("DELETE", f"/apis/batch/v1/namespaces/default/jobs/{name}", b"")
    status = executor.poll(name)
    assert status.state is RunPhase.FAILED
    assert status.reason is not None and "gone" in status.reason


def test_cleanup_deletes_an_ended_job(executor: KubernetesExecutor, fake: FakeKubeApi) -> None:
    name = executor.start(make_lease(["true"], image="busybox"))
    fake.run(name)
    fake.finish(name, 0)
    executor.cleanup(name)
    assert fake.jobs == {}
    executor.cleanup(name)  # twice is fine


def test_refusals_are_start_errors(executor: KubernetesExecutor, fake: FakeKubeApi) -> None:
    with pytest.raises(StartError, match="no container image"):
        executor.start(make_lease(["true"]))
    with pytest.raises(StartError, match="invalid name"):
        executor.start(make_lease(["true"], image="busybox", env={"BAD NAME": "1"}))
    assert fake.jobs == {}


def test_the_log_tail_fits_the_wire_limit(executor: KubernetesExecutor, fake: FakeKubeApi) -> None:
    name = executor.start(make_lease(["x"], image="busybox"))
    fake.run(name, log="".join(f"{i:06d} " + "x" * 200 + "\n" for i in range(500)))
    tail = executor.poll(name).log_tail
    assert len(tail.encode()) <= LOG_TAIL_MAX_BYTES
    assert tail.endswith("000499 " + "x" * 200 + "\n")


def test_an_unreachable_api_is_a_retryable_error(tmp_path: Path) -> None:
    executor = build_executor(
        "kubernetes", {"host": "http://127.0.0.1:9", "request_timeout_s": 2}, tmp_path
    )
    with pytest.raises(ExecutorError) as caught:
        executor.start(make_lease(["true"], image="busybox"))
    assert not isinstance(caught.value, StartError)


def test_names_and_label_values_are_made_safe() -> None:
    assert job_name("run-42") == "jinsuan-run-42"
    odd = [job_name("Run/42"), job_name("run_42"), job_name("run:42"), job_name("x" * 128)]
    assert len(set(odd)) == len(odd)
    assert all(DNS_LABEL.match(n) for n in odd)
    for value in ("ok.value", "a/b:c@d", "-lead", "y" * 100):
        safe = label_value(value)
        assert LABEL_VALUE.match(safe) and len(safe) <= 63
    assert label_value("a/b") != label_value("a_b")
