"""The Kubernetes executor: each run is one ``batch/v1`` Job, made with the official client.

The Job (``jinsuan-<run id>``, made DNS-safe) carries labels for its run, job, tenant and
project (values made label-safe; the exact run id is also an annotation), ``backoffLimit: 0``
(the platform, not Kubernetes, decides retries, and prefers another site),
``activeDeadlineSeconds`` from the lease's max runtime, and one container ``run`` with the
payload's image, command, environment and working directory. Accelerators are resource limits
named by vendor: ``nvidia.com/gpu`` for NVIDIA, ``huawei.com/Ascend910`` for Huawei Ascend
(``resource_by_vendor``). A lease with several tasks becomes an Indexed Job with that many
completions and pods in parallel; all-or-nothing start of such a gang needs a gang scheduler on
the cluster (Volcano, Kueue; see ``scheduler_name``), which plain Jobs do not give.

Following it: the Job's ``Complete``/``Failed`` condition says the outcome (``DeadlineExceeded``
is a timeout), its pods say when the container started and ended and with what exit code, and
``read_namespaced_pod_log(tail_lines=...)`` gives the log tail. ``cancel`` and ``cleanup`` delete
the Job with ``propagationPolicy=Background`` so its pods go too; a run cancelled by this agent
reports ``cancelled`` with the log tail read just before, and a Job deleted by anyone else is
reported failed, gone.

The ``kubernetes`` package is imported only here; it belongs to the ``agent`` extra.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field
from urllib3.exceptions import HTTPError as TransportError

from agents.executors import (
    ExecutorError,
    RunPhase,
    RunStatus,
    StartError,
    run_environment,
    trim_tail,
)
from agents.executors.accelerators import resource_name
from jinsuan.contract.leasewire import Lease

CONTAINER = "run"
LABEL_PREFIX = "jinsuan"
RUN_ID_ANNOTATION = f"{LABEL_PREFIX}/run-id"
# Connection refused, timeouts, broken responses: the API is unreachable now, try again later.
_UNREACHABLE = (OSError, TransportError)
_NAME_MAX = 63  # a Job's name is also a pod label value
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class KubernetesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = "default"
    host: str | None = Field(
        default=None, description="API server URL; when set, no kubeconfig is read."
    )
    token: str | None = Field(default=None, description="Bearer token, with host.")
    verify_tls: bool = True
    ca_cert: Path | None = None
    in_cluster: bool = Field(default=False, description="Use the pod's service account.")
    kubeconfig: Path | None = None
    context: str | None = None
    default_image: str | None = Field(
        default=None, description="Image for leases whose payload names none."
    )
    resource_by_vendor: dict[str, str] = Field(
        default_factory=lambda: {"nvidia": "nvidia.com/gpu", "huawei": "huawei.com/Ascend910"}
    )
    default_vendor: str = "nvidia"
    service_account: str | None = None
    scheduler_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    image_pull_secrets: list[str] = Field(default_factory=list)
    log_tail_lines: int = Field(default=500, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self,
        config: KubernetesConfig | None = None,
        *,
        state_dir: Path,
        api_client: client.ApiClient | None = None,
    ) -> None:
        del state_dir  # the cluster keeps everything this executor needs
        self.config = config or KubernetesConfig()
        api = api_client or client.ApiClient(_client_configuration(self.config))
        self._batch = client.BatchV1Api(api)
        self._core = client.CoreV1Api(api)
        self._cancelled: dict[str, RunStatus] = {}  # what a run looked like when we deleted it

    def start(self, lease: Lease) -> str:
        job = job_manifest(lease, self.config)
        name = job.metadata.name
        try:
            self._batch.create_namespaced_job(
                self.config.namespace, job, _request_timeout=self.config.request_timeout_s
            )
        except ApiException as exc:
            if exc.status == 409:
                return self._existing(name, lease.run_id)
            if exc.status in (400, 403, 422):
                raise StartError(f"Kubernetes refused Job {name}: {_message(exc)}") from None
            raise ExecutorError(f"creating Job {name} failed: {_message(exc)}") from None
        except _UNREACHABLE as exc:
            raise ExecutorError(f"Kubernetes API unreachable: {exc}") from None
        return name

    def poll(self, ref: str) -> RunStatus:
        try:
            job = self._batch.read_namespaced_job(
                ref, self.config.namespace, _request_timeout=self.config.request_timeout_s
            )
        except ApiException as exc:
            if exc.status == 404:
                return self._cancelled.get(ref) or RunStatus(
                    state=RunPhase.FAILED,
                    reason=f"Kubernetes Job {ref} is gone (deleted outside this agent)",
                )
            raise ExecutorError(f"reading Job {ref} failed: {_message(exc)}") from None
        except _UNREACHABLE as exc:
            raise ExecutorError(f"Kubernetes API unreachable: {exc}") from None
        pods = self._pods(ref)
        return job_status(job, pods, self._log_tail(pods))

    def cancel(self, ref: str) -> None:
        status = self.poll(ref)
        if status.state.ended:
            return
        self._delete(ref)
        self._cancelled[ref] = RunStatus(
            state=RunPhase.FAILED,
            started_at=status.started_at,
            ended_at=datetime.now(UTC),
            log_tail=status.log_tail,
            reason="cancelled",
        )

    def cleanup(self, ref: str) -> None:
        self._delete(ref)
        self._cancelled.pop(ref, None)

    def _delete(self, ref: str) -> None:
        try:
            self._batch.delete_namespaced_job(
                ref,
                self.config.namespace,
                propagation_policy="Background",
                _request_timeout=self.config.request_timeout_s,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise ExecutorError(f"deleting Job {ref} failed: {_message(exc)}") from None
        except _UNREACHABLE as exc:
            raise ExecutorError(f"Kubernetes API unreachable: {exc}") from None

    def _existing(self, name: str, run_id: str) -> str:
        try:
            job = self._batch.read_namespaced_job(name, self.config.namespace)
        except ApiException as exc:
            raise ExecutorError(f"reading Job {name} failed: {_message(exc)}") from None
        owner = (job.metadata.annotations or {}).get(RUN_ID_ANNOTATION)
        if owner != run_id:
            raise StartError(f"Job {name} exists for another run ({owner!r}), not {run_id!r}")
        return name

    def _pods(self, name: str) -> list[Any]:
        try:
            listed = self._core.list_namespaced_pod(
                self.config.namespace,
                label_selector=f"job-name={name}",
                _request_timeout=self.config.request_timeout_s,
            )
        except ApiException as exc:
            raise ExecutorError(f"listing the pods of Job {name} failed: {_message(exc)}") from None
        return list(listed.items or [])

    def _log_tail(self, pods: list[Any]) -> str:
        pod = _most_telling(pods)
        if pod is None:
            return ""
        try:
            text = self._core.read_namespaced_pod_log(
                pod.metadata.name,
                self.config.namespace,
                container=CONTAINER,
                tail_lines=self.config.log_tail_lines,
                _request_timeout=self.config.request_timeout_s,
            )
        except ApiException:
            return ""  # not started yet, or already gone: no log to show
        return trim_tail(text or "")


def job_name(run_id: str) -> str:
    """``jinsuan-<run id>`` as a DNS-1123 label; ids it cannot carry as they are get a digest."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    if slug != run_id or len(slug) > _NAME_MAX - len("jinsuan-"):
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
        slug = f"{slug[:40].rstrip('-')}-{digest}".lstrip("-")
    return f"jinsuan-{slug}"


def label_value(value: str) -> str:
    """``value`` as a label value (≤ 63 of ``[-A-Za-z0-9_.]``, alphanumeric at both ends)."""
    if _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^-A-Za-z0-9_.]+", "_", value)[:52].strip("-_.")
    return f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:10]}".lstrip("-")


def job_manifest(lease: Lease, settings: KubernetesConfig) -> client.V1Job:
    image = lease.payload.image or settings.default_image
    if not image:
        raise StartError("the payload names no container image and no default_image is set")
    name = job_name(lease.run_id)
    labels = {
        f"{LABEL_PREFIX}/run": label_value(lease.run_id),
        f"{LABEL_PREFIX}/job": label_value(lease.job_id),
        f"{LABEL_PREFIX}/tenant": label_value(lease.tenant),
        f"{LABEL_PREFIX}/project": label_value(lease.project),
    }
    limits: dict[str, str] = {}
    if lease.accelerators_per_task:
        resource = resource_name(
            lease, settings.resource_by_vendor, settings.default_vendor, "resource_by_vendor"
        )
        limits[resource] = str(lease.accelerators_per_task)
    env = run_environment(lease)
    container = client.V1Container(
        name=CONTAINER,
        image=image,
        command=list(lease.payload.command),
        env=[client.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())],
        working_dir=lease.payload.workdir,
        resources=client.V1ResourceRequirements(limits=limits) if limits else None,
    )
    pod_spec = client.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        service_account_name=settings.service_account,
        scheduler_name=settings.scheduler_name,
        node_selector=dict(settings.node_selector) or None,
        image_pull_secrets=[
            client.V1LocalObjectReference(name=s) for s in settings.image_pull_secrets
        ]
        or None,
    )
    gang = lease.tasks > 1
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name, labels=labels, annotations={RUN_ID_ANNOTATION: lease.run_id}
        ),
        spec=client.V1JobSpec(
            backoff_limit=0,
            active_deadline_seconds=lease.max_runtime_s,
            completions=lease.tasks if gang else None,
            parallelism=lease.tasks if gang else None,
            completion_mode="Indexed" if gang else None,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=pod_spec
            ),
        ),
    )


def job_status(job: Any, pods: Iterable[Any], tail: str) -> RunStatus:
    """The run's status from its Job and pods (as the client returns them)."""
    status = job.status
    terminated = [s for s in _container_states(pods) if s.terminated is not None]
    running = [s for s in _container_states(pods) if s.running is not None]
    starts = [s.terminated.started_at for s in terminated] + [s.running.started_at for s in running]
    started_at = min((t for t in starts if t is not None), default=None)
    condition = next(
        (
            c
            for c in (status.conditions if status else None) or []
            if c.type in ("Complete", "Failed") and c.status == "True"
        ),
        None,
    )
    if condition is None:
        phase = RunPhase.RUNNING if running or terminated else RunPhase.PENDING
        return RunStatus(state=phase, started_at=started_at, log_tail=tail)
    ended_at = status.completion_time or condition.last_transition_time
    codes = [s.terminated.exit_code for s in terminated]
    if condition.type == "Complete":
        return RunStatus(
            state=RunPhase.SUCCEEDED,
            exit_code=0,
            started_at=started_at or status.start_time,
            ended_at=ended_at,
            log_tail=tail,
        )
    failing = [code for code in codes if code]
    if condition.reason == "DeadlineExceeded":
        reason = f"timed out: {condition.message or 'active deadline exceeded'}"
    else:
        reason = f"Kubernetes Job failed: {condition.reason or 'Failed'}"
        if condition.message:
            reason += f" ({condition.message})"
    return RunStatus(
        state=RunPhase.FAILED,
        exit_code=failing[0] if failing else None,
        started_at=started_at or status.start_time,
        ended_at=ended_at,
        log_tail=tail,
        reason=reason,
    )


def _container_states(pods: Iterable[Any]) -> list[Any]:
    states = []
    for pod in pods:
        for container in (pod.status.container_statuses if pod.status else None) or []:
            if container.name == CONTAINER and container.state is not None:
                states.append(container.state)
    return states


def _most_telling(pods: list[Any]) -> Any | None:
    """The pod whose log says most: a failed one, else the newest."""
    if not pods:
        return None
    failed = [p for p in pods if p.status and p.status.phase == "Failed"]
    if failed:
        return failed[0]
    epoch = datetime.min.replace(tzinfo=UTC)
    return max(pods, key=lambda p: p.metadata.creation_timestamp or epoch)


def _message(exc: ApiException) -> str:
    return f"HTTP {exc.status} {exc.reason}: {(exc.body or '')[:500]}"


def _client_configuration(settings: KubernetesConfig) -> client.Configuration:
    if settings.host:
        configuration = client.Configuration(host=settings.host)
        configuration.verify_ssl = settings.verify_tls
        if settings.ca_cert:
            configuration.ssl_ca_cert = str(settings.ca_cert)
        if settings.token:
            configuration.api_key = {"authorization": settings.token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration
    configuration = client.Configuration()
    try:
        if settings.in_cluster:
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            kube_config.load_kube_config(
                config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
                context=settings.context,
                client_configuration=configuration,
            )
    except kube_config.ConfigException as exc:
        raise ExecutorError(f"no usable Kubernetes configuration: {exc}") from None
    return configuration
