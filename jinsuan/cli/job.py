"""``jinsuan job``: submit, list, show, watch and cancel jobs through the platform's REST API.

The key comes from ``--key`` or ``JINSUAN_API_KEY`` (a dispatcher key submits for its tenant),
the platform from ``--url`` or ``JINSUAN_URL``.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from jinsuan.cli.client import Key, Url, call, console, fail

job_app = typer.Typer(help="Jobs: submit, list, show (and why not placed), watch, cancel.",
                      no_args_is_help=True)
_ENDED = {"succeeded", "failed", "cancelled"}


def _load_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise fail(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise fail(f"{path}: a job spec is a mapping (project:, tasks:, payload: ...)")
    return data


def build_spec(file: Path | None, flags: dict[str, Any], constraints: dict[str, Any],
               payload: dict[str, Any]) -> dict[str, Any]:
    """The job spec from the file, with any flags given laid over it; validated here so that
    a mistake names its field before anything is sent."""
    from pydantic import ValidationError

    from scheduler.spec import JobSpec

    spec = _load_file(file) if file else {}
    spec.update({k: v for k, v in flags.items() if v is not None})
    given = {k: v for k, v in constraints.items() if v not in (None, [], False)}
    if given:
        spec["constraints"] = {**spec.get("constraints", {}), **given}
    given = {k: v for k, v in payload.items() if v not in (None, [], {})}
    if given:
        spec["payload"] = {**spec.get("payload", {}), **given}
    try:
        return JobSpec.model_validate(spec).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        source = f"{file}: " if file else ""
        raise fail(f"{source}{where}: {first['msg']}") from None


@job_app.command()
def submit(
    url: Url,
    key: Key,
    file: Annotated[Path | None, typer.Argument(help="job.yaml; flags override its fields.")]
    = None,
    command: Annotated[list[str] | None, typer.Option(
        "--command", "-c", help="The command and its arguments, one per --command.")] = None,
    project: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    tasks: Annotated[int | None, typer.Option(help="Tasks in the gang.")] = None,
    accelerators: Annotated[int | None, typer.Option(
        "--accelerators", "-g", help="Accelerators per task.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Accepted model (repeat).")] = None,
    vendor: Annotated[str | None, typer.Option()] = None,
    domestic_only: Annotated[bool, typer.Option(help="Domestic accelerators only.")] = False,
    min_tflops: Annotated[float | None, typer.Option(help="FP16 TFLOPS per device.")] = None,
    min_memory_gb: Annotated[float | None, typer.Option()] = None,
    city: Annotated[list[str] | None, typer.Option(help="Preferred city (repeat).")] = None,
    site: Annotated[str | None, typer.Option(help="Pin to this site.")] = None,
    max_price: Annotated[str | None, typer.Option(help="Yuan per accelerator-hour.")] = None,
    priority: Annotated[int | None, typer.Option()] = None,
    max_runtime: Annotated[int | None, typer.Option(help="Seconds.")] = None,
    retries: Annotated[int | None, typer.Option()] = None,
    voucher: Annotated[int | None, typer.Option(
        help="A compute voucher of your applicant for the job's usage to draw on.")] = None,
    image: Annotated[str | None, typer.Option(help="Container image.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        help="Names this submit: run again with the same key (after a timeout, say), it prints"
             " the job queued the first time and queues nothing.")] = None,
) -> None:
    """Submit a job and print its id."""
    environment = {}
    for item in env or []:
        name_, sep, value = item.partition("=")
        if not sep or not name_:
            raise fail(f"--env {item!r} is not KEY=VALUE")
        environment[name_] = value
    spec = build_spec(
        file,
        {"project": project, "name": name, "tasks": tasks, "accelerators_per_task": accelerators,
         "priority": priority, "max_runtime_s": max_runtime, "retries": retries,
         "voucher": voucher},
        {"models": model or [], "vendor": vendor, "domestic_only": domestic_only,
         "min_fp16_tflops": min_tflops, "min_memory_gb": min_memory_gb, "cities": city or [],
         "site": site, "max_price": str(Decimal(max_price)) if max_price else None},
        {"command": command or [], "image": image, "env": environment},
    )
    made = call("POST", url, key, "/v1/jobs", json=spec,
                headers={"Idempotency-Key": idempotency_key} if idempotency_key else None)
    for warning in made.get("warnings", []):
        typer.echo(f"warning: {warning['constraint']}: {warning['reason']}", err=True)
    typer.echo(made["id"])


@job_app.command("list")
def list_(url: Url, key: Key,
          state: Annotated[str | None, typer.Option()] = None,
          tenant: Annotated[str | None, typer.Option()] = None,
          limit: Annotated[int, typer.Option()] = 50) -> None:
    """Your jobs, newest first (the bureau sees every tenant's)."""
    params = {k: v for k, v in {"state": state, "tenant": tenant, "limit": limit}.items() if v}
    table = Table("tenant", "project", "state", "tries", "accelerators", "submitted")
    table.add_column("id", no_wrap=True)
    for job in call("GET", url, key, "/v1/jobs", params=params):
        table.add_row(job["tenant"], job["project"], job["state"], str(job["tries"]),
                      f"{job['tasks']}×{job['accelerators_per_task']}",
                      job["submitted_at"][:19], job["id"])
    console.print(table)


def render(job: dict[str, Any]) -> None:
    console.print(Text.assemble((job["id"], "bold"), f"  {job['tenant']}/{job['project']}  ",
                                (job["state"], "bold"), f" since {job['state_changed_at']}  "
                                f"tries {job['tries']}"))
    runs = job["runs"]
    if runs and job["state"] in ("placed", "leased", "running"):
        run = runs[-1]
        console.print(Text.assemble("runs at ", (run["site"], "bold"),
                                    f" on {run['accelerators']} × {run['model']} (run"
                                    f" {run['id']}, lease until {run['lease_expires_at']})"))
    if job.get("end_reason"):
        console.print(f"ended: {job['end_reason']}")
    if runs:
        table = Table("attempt", "site", "state", "placed", "started", "ended", "exit")
        for run in runs:
            table.add_row(str(run["attempt"]), run["site"], run["state"], run["placed_at"],
                          run["started_at"] or "", run["ended_at"] or "",
                          "" if run["exit_code"] is None else str(run["exit_code"]))
        console.print(table)
    for run in runs:
        if run["log_tail"]:  # the job's own tenant reads it; others are shown "(withheld)"
            console.print(Text.assemble(("output", "bold"), f" of attempt {run['attempt']} at"
                                        f" {run['site']} ({run['id']}), its last lines:"))
            console.out(run["log_tail"].rstrip("\n"), highlight=False)
    if job.get("permanent"):
        table = Table("constraint", "why", title="no registered site can ever take it")
        for obstacle in job["permanent"]:
            table.add_row(obstacle["constraint"], obstacle["reason"])
        console.print(table)
    if job.get("why_not") is not None:
        table = Table("site", "ruled out by", "why", title="why not placed yet")
        for verdict in job["why_not"]:
            table.add_row(verdict["site"], verdict["constraint"], verdict["reason"])
        console.print(table if job["why_not"] else "no sites are registered")


@job_app.command()
def show(job_id: str, url: Url, key: Key) -> None:
    """Where the job runs and since when, its tries, its runs' output, while it waits why it is
    not placed (and what no registered site could ever offer it), and what its usage drew from
    its voucher."""
    job = call("GET", url, key, f"/v1/jobs/{job_id}")
    render(job)
    if job["spec"].get("voucher"):
        table = Table("usage record", "voucher", "drew (yuan)", "why",
                      title=f"voucher {job['spec']['voucher']}")
        for draw in call("GET", url, key, f"/v1/vouchers/draws/by-job/{job_id}"):
            table.add_row(str(draw["usage_record"]), str(draw["voucher"]), draw["amount"],
                          draw["reason"])
        console.print(table if table.row_count else "no usage drawn on the voucher yet")


@job_app.command()
def watch(job_id: str, url: Url, key: Key,
          every: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0) -> None:
    """Print each state change until the job ends."""
    seen = None
    while True:
        job = call("GET", url, key, f"/v1/jobs/{job_id}")
        if job["state"] != seen:
            seen = job["state"]
            where = f" at {job['runs'][-1]['site']}" if job["runs"] else ""
            console.print(f"{job['state_changed_at']}  {seen}{where}  (tries {job['tries']})")
        if seen in _ENDED:
            return
        time.sleep(every)


@job_app.command()
def cancel(job_id: str, url: Url, key: Key) -> None:
    """Cancel a job; a running job's site stops it at its next heartbeat."""
    typer.echo(call("POST", url, key, f"/v1/jobs/{job_id}/cancel")["state"])
