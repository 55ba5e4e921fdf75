"""The job spec a dispatcher submits (as YAML, JSON or CLI flags).

``Constraints`` is the part placement reads; it is stored apart from the rest as canonical JSON
so that the many jobs sharing one set of constraints are parsed and filtered once per cycle.

``JobPayload`` bounds what a job may ask a site to run. A payload is stored with the job and
shipped to an agent in every lease answer that hands it the job, so its size is capped here, where
jobs come in, well below the platform's 1 MiB request body limit. The wire model
(``leasewire.Payload``) keeps its own looser bounds: every lease answer is validated against it,
so a job stored before these caps existed still leases.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from jinsuan.contract.leasewire import Payload

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:@/-]+$")]
MAX_RUNTIME_S = 30 * 86_400  # a job's run time limit may be at most 30 days
# A payload's caps (README, "Jobs"); image (512) and workdir (4,096 characters) are capped by
# leasewire.Payload itself. Sizes are UTF-8 bytes.
MAX_COMMAND_ARGS = 1024
MAX_COMMAND_BYTES = 64 * 1024  # all the command's arguments together
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 64 * 1024  # every name and value together


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constraints(_Spec):
    """Where a job may run. Every field narrows the candidate sites; ``cities`` only prefers."""

    models: tuple[str, ...] = Field(default=(), description="Accepted models; empty: any.")
    vendor: str | None = None
    domestic_only: bool = False
    min_fp16_tflops: float | None = Field(default=None, gt=0, description="Per device.")
    min_memory_gb: float | None = Field(default=None, gt=0, description="Per device.")
    in_province_only: bool = Field(
        default=True, description="Vouchers pay only for Shanxi compute, so this is the default."
    )
    cities: tuple[str, ...] = Field(default=(), description="Preferred cities (data locality).")
    site: str | None = Field(default=None, description="Pinned site name.")
    max_price: Decimal | None = Field(
        default=None, ge=0, decimal_places=2, description="Yuan per accelerator-hour, at most."
    )

    @field_validator("models", "cities")
    @classmethod
    def _no_blank(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in values):
            raise ValueError("must not contain blank names")
        return values


class JobPayload(Payload):
    """The command, image, environment and working directory, within the caps above."""

    command: list[str] = Field(min_length=1, max_length=MAX_COMMAND_ARGS)
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_VARS)

    @field_validator("command")
    @classmethod
    def _command_fits(cls, command: list[str]) -> list[str]:
        size = sum(len(arg.encode()) for arg in command)
        if size > MAX_COMMAND_BYTES:
            raise ValueError(f"the command's arguments are {size} bytes together;"
                             f" at most {MAX_COMMAND_BYTES}")
        return command

    @field_validator("env")
    @classmethod
    def _env_fits(cls, env: dict[str, str]) -> dict[str, str]:
        size = sum(len(name.encode()) + len(value.encode()) for name, value in env.items())
        if size > MAX_ENV_BYTES:
            raise ValueError(f"the environment's names and values are {size} bytes together;"
                             f" at most {MAX_ENV_BYTES}")
        return env


class JobSpec(_Spec):
    tenant: Name | None = Field(default=None, description="Defaults to the dispatcher's tenant.")
    project: Name
    name: str = Field(default="", max_length=256)
    tasks: int = Field(default=1, ge=1, le=4096)
    accelerators_per_task: int = Field(default=1, ge=1, le=64)
    constraints: Constraints = Field(default_factory=Constraints)
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_runtime_s: int | None = Field(default=None, gt=0, le=MAX_RUNTIME_S)
    retries: int = Field(default=0, ge=0, le=100)
    voucher: int | None = Field(
        default=None, gt=0, description="A compute voucher (算力券) of the applicant the tenant"
        " acts for: each usage record of the job draws on it (GET /v1/vouchers/draws/by-job).")
    payload: JobPayload

    @property
    def accelerators(self) -> int:
        return self.tasks * self.accelerators_per_task

    def constraints_key(self) -> str:
        """Canonical JSON of the constraints: equal constraints give equal keys."""
        return self.constraints.model_dump_json()
