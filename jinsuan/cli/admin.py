"""Administration: API keys, agents and sites through the platform's API.

``jinsuan keys``, ``jinsuan agents`` and ``jinsuan sites`` are clients of the API
(``--url``/``JINSUAN_URL`` and an admin's, or for agents and sites an operator's,
``--key``/``JINSUAN_API_KEY``), so that every change is checked by the platform's roles and
written to its audit log. One path writes the database directly: ``jinsuan keys create --role
admin`` without ``--url`` and ``--key``, run on the platform host, makes the first admin key,
there being no key yet to call the API with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from jinsuan.cli.client import Key, Url, call, console, fail

keys_app = typer.Typer(help="API keys: each bound to a role and an owner.", no_args_is_help=True)
agents_app = typer.Typer(help="Enrolled agents of the sites: list and revoke.",
                         no_args_is_help=True)
sites_app = typer.Typer(help="Data-centre sites and their agents' enrolment.",
                        no_args_is_help=True)

MaybeUrl = Annotated[str | None, typer.Option(
    "--url", envvar="JINSUAN_URL", help="The platform's URL; leave out, with --key, only for the"
    " first admin key (written to the database directly).")]
MaybeKey = Annotated[str | None, typer.Option(
    "--key", envvar="JINSUAN_API_KEY", help="An admin key; see --url.")]


@contextmanager
def connection() -> Iterator[object]:
    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.store import Database

    db = Database.open(Settings(run_background_jobs=False))
    try:
        with db.pool.connection() as conn:
            yield conn
    finally:
        db.close()


def _moment(text: str | None) -> datetime | None:
    """An ISO 8601 date or date and time; Asia/Shanghai when it names no time zone."""
    if text is None:
        return None
    from jinsuan.contract.policytime import SHANGHAI

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--expires-at {text!r} is not an ISO 8601 date or date and time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=SHANGHAI)


@keys_app.command("create")
def create_key(
    role: Annotated[str, typer.Option(
        help="operator, dispatcher, bureau (reviews and pays), viewer (the bureau, read-only),"
             " applicant (a voucher applicant's staff), admin or metrics")],
    url: MaybeUrl = None,
    key: MaybeKey = None,
    enterprise: Annotated[str | None, typer.Option(help="The operator's enterprise.")] = None,
    tenant: Annotated[str | None, typer.Option(help="The dispatcher's tenant.")] = None,
    applicant: Annotated[int | None, typer.Option(
        help="The applicant key's voucher applicant (its id).")] = None,
    label: Annotated[str, typer.Option(help="A note saying who holds the key.")] = "",
    expires_at: Annotated[str | None, typer.Option(
        help="Refused from then on, e.g. 2027-01-01 (Asia/Shanghai unless a zone is given);"
             " never by default.")] = None,
) -> None:
    """Create an API key and print it once; only its hash is stored.

    Through the API, with an admin's --url and --key. Without them, on the platform host:
    --role admin only, the first admin key, written to the database directly.
    """
    from jinsuan.kernel.auth import Role

    try:
        parsed = Role(role)
    except ValueError:
        raise fail(f"--role {role!r} is not one of {', '.join(r.value for r in Role)}") from None
    expiry = _moment(expires_at)
    if url is not None and key is not None:
        made = call("POST", url, key, "/v1/keys", json={
            "role": parsed.value, "enterprise": enterprise, "tenant": tenant,
            "applicant_id": applicant, "label": label,
            "expires_at": None if expiry is None else expiry.isoformat()})
        typer.echo(made["key"])
        return
    if url is not None or key is not None or parsed is not Role.ADMIN:
        raise fail("give --url and an admin's --key; only the first admin key (--role admin,"
                   " neither --url nor --key) is written to the database directly")
    typer.echo(_first_admin_key(label, expiry))


def _first_admin_key(label: str, expires_at: datetime | None) -> str:
    """An admin key written to the database directly: how the first one is made."""
    from jinsuan.kernel import auth
    from jinsuan.kernel.errors import JinsuanError

    with connection() as conn:
        try:
            return auth.create_key(conn, auth.Role.ADMIN, label=label, expires_at=expires_at)
        except JinsuanError as exc:
            raise fail(f"--{exc.field.replace('_', '-')}: {exc.reason}" if exc.field
                       else exc.reason) from None


def _when(moment: str | None) -> str:
    return "" if moment is None else moment[:19].replace("T", " ")


@keys_app.command("list")
def list_keys(url: Url, key: Key) -> None:
    """Every key, newest first: prefix, role, owner, label and dates; never a secret."""
    table = Table("prefix", "role", "owner", "label", "created", "expires", "revoked")
    for row in call("GET", url, key, "/v1/keys"):
        table.add_row(row["prefix"], row["role"], row["enterprise"] or row["tenant"] or "",
                      row["label"], _when(row["created_at"]), _when(row["expires_at"]),
                      _when(row["revoked_at"]))
    console.print(table)


_TAKES_EFFECT = ("refused at once by the platform process that answered, by its others within"
                 " 5 seconds")


@keys_app.command("revoke")
def revoke_key(prefix: Annotated[str, typer.Argument(
               help="The part after jsk_, e.g. 1a2b3c4d5e6f")], url: Url, key: Key) -> None:
    """Revoke a key by its prefix."""
    call("POST", url, key, f"/v1/keys/{prefix}/revoke")
    console.print(f"revoked jsk_{prefix}_…: {_TAKES_EFFECT}")


@keys_app.command("rotate")
def rotate_key(prefix: Annotated[str, typer.Argument(
               help="The part after jsk_, e.g. 1a2b3c4d5e6f")], url: Url, key: Key) -> None:
    """Replace a key by a new one of the same role, owner, label and expiry; print the new key
    once, and revoke the old one."""
    made = call("POST", url, key, f"/v1/keys/{prefix}/rotate")
    typer.echo(made["key"])
    typer.echo(f"jsk_{prefix}_… revoked: {_TAKES_EFFECT}", err=True)


@agents_app.command("list")
def list_agents(url: Url, key: Key) -> None:
    """Enrolled agents (an operator's key: its enterprise's sites' only), revoked ones too."""
    table = Table("site", "hostname", "enrolled", "last report", "last seq", "revoked")
    table.add_column("id", no_wrap=True)
    agents: list[dict[str, Any]] = call("GET", url, key, "/v1/agents")
    for agent in agents:
        table.add_row(agent["site"], agent["hostname"], _when(agent["enrolled_at"]),
                      _when(agent["last_report_at"]), str(agent["last_seq"]),
                      _when(agent["revoked_at"]), agent["id"])
    console.print(table)


def revoke_agent(agent: Annotated[str, typer.Argument(help="The agent's id, e.g. agt_1a2b...")],
                 url: Url, key: Key) -> None:
    """Revoke an agent: its reports, lease requests and run events are refused at once."""
    call("POST", url, key, f"/v1/agents/{agent}/revoke")
    console.print(f"revoked agent {agent}; its reports and leases are refused from now on")


agents_app.command("revoke")(revoke_agent)


@sites_app.command("create")
def create_site(
    name: Annotated[str, typer.Argument()],
    city: Annotated[str, typer.Option()],
    url: Url,
    key: Key,
    enterprise: Annotated[str | None, typer.Option(
        help="The site's enterprise (created if new); an operator's key: its own, by default.")
    ] = None,
    out_of_province: Annotated[bool, typer.Option(help="The site is outside Shanxi.")] = False,
    data_centre: Annotated[str | None, typer.Option(
        help="The data centre the site is part of (PUE and racks are judged per data centre);"
             " by default a data centre of its own, named after the site.")] = None,
) -> None:
    """Register a site: an admin's key for any enterprise, an operator's for its own."""
    body = {"name": name, "enterprise": enterprise, "city": city, "data_centre": data_centre}
    if out_of_province:  # an admin's say alone: an operator's site is in Shanxi
        body["in_province"] = False
    site = call("POST", url, key, "/v1/sites", json=body)
    console.print(f"site {site['id']} {site['name']!r} in {site['city']} for"
                  f" {site['enterprise']}, data centre {site['data_centre']!r}")


@sites_app.command("token")
def enrolment_token(
    site: Annotated[str, typer.Argument(help="The site's name.")],
    url: Url,
    key: Key,
    hours: Annotated[float, typer.Option(help="How long the token stays valid.")] = 24,
) -> None:
    """Create a one-time enrolment token for a site's agent."""
    found: list[dict[str, Any]] = call("GET", url, key, "/v1/sites", params={"site": site})
    if not found:  # an operator's key: another enterprise's site is missing, as it is here
        raise fail(f"no site named {site!r}")
    made = call("POST", url, key, f"/v1/sites/{found[0]['id']}/enrolment-tokens",
                json={"valid_for_hours": hours})
    typer.echo(made["token"])


sites_app.command("revoke-agent", help="The same as `jinsuan agents revoke`.")(revoke_agent)
