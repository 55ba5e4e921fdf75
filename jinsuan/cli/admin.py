"""Administration on the platform's database: API keys, sites, enrolment tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from jinsuan.cli.client import console, fail

keys_app = typer.Typer(help="API keys: each bound to a role and an owner.", no_args_is_help=True)
sites_app = typer.Typer(help="Data-centre sites and their agents' enrolment.",
                        no_args_is_help=True)


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


@keys_app.command("create")
def create_key(
    role: Annotated[str, typer.Option(
        help="operator, dispatcher, bureau (reviews and pays), viewer (the bureau, read-only),"
             " admin or metrics")],
    enterprise: Annotated[str | None, typer.Option(help="The operator's enterprise.")] = None,
    tenant: Annotated[str | None, typer.Option(help="The dispatcher's tenant.")] = None,
    label: Annotated[str, typer.Option(help="A note saying who holds the key.")] = "",
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from jinsuan.kernel.auth import Role, create_key
    from jinsuan.kernel.errors import JinsuanError
    from jinsuan.kernel.sites import enterprise_id

    try:
        parsed = Role(role)
    except ValueError:
        raise fail(f"--role {role!r} is not one of {', '.join(r.value for r in Role)}") from None
    with connection() as conn:
        try:
            owner = enterprise_id(conn, enterprise) if enterprise else None
            key = create_key(conn, parsed, enterprise_id=owner, tenant=tenant, label=label)
        except JinsuanError as exc:
            raise fail(f"--{exc.field}: {exc.reason}" if exc.field else exc.reason) from None
    typer.echo(key)


@keys_app.command("revoke")
def revoke_key(prefix: Annotated[str, typer.Argument(help="The part after jsk_, e.g. 1a2b3c4d5e6f")]
               ) -> None:
    """Revoke a key by its prefix."""
    from jinsuan.kernel.auth import revoke_key

    with connection() as conn:
        if not revoke_key(conn, prefix):
            raise fail(f"no active key with prefix {prefix!r}")
    console.print(f"revoked jsk_{prefix}_…")


@sites_app.command("create")
def create_site(
    name: Annotated[str, typer.Argument()],
    enterprise: Annotated[str, typer.Option()],
    city: Annotated[str, typer.Option()],
    out_of_province: Annotated[bool, typer.Option(help="The site is outside Shanxi.")] = False,
    data_centre: Annotated[str | None, typer.Option(
        help="The data centre the site is part of (PUE and racks are judged per data centre);"
             " by default a data centre of its own, named after the site.")] = None,
) -> None:
    """Register a site of an enterprise (the enterprise is created if new)."""
    from jinsuan.kernel.errors import JinsuanError
    from jinsuan.kernel.sites import create_site

    with connection() as conn:
        try:
            site = create_site(conn, enterprise=enterprise, name=name, city=city,
                               in_province=not out_of_province, data_centre=data_centre)
        except JinsuanError as exc:
            raise fail(exc.reason) from None
    console.print(f"site {site.id} {site.name!r} in {site.city} for {site.enterprise},"
                  f" data centre {site.data_centre!r}")


@sites_app.command("token")
def enrolment_token(
    site: Annotated[str, typer.Argument(help="The site's name.")],
    hours: Annotated[float, typer.Option(help="How long the token stays valid.")] = 24,
) -> None:
    """Create a one-time enrolment token for a site's agent."""
    from datetime import timedelta

    from jinsuan.kernel.errors import JinsuanError
    from jinsuan.kernel.sites import create_enrolment_token, site_by_name

    with connection() as conn:
        try:
            found = site_by_name(conn, site)
        except JinsuanError as exc:
            raise fail(exc.reason) from None
        token = create_enrolment_token(conn, found.id, created_by=None,
                                       valid_for=timedelta(hours=hours))
    typer.echo(token)


@sites_app.command("revoke-agent")
def revoke_agent(agent: Annotated[str, typer.Argument(help="The agent's id, e.g. agt_1a2b...")]
                 ) -> None:
    """Revoke an agent: its reports, lease requests and run events are refused at once."""
    from jinsuan.kernel.sites import revoke_agent

    with connection() as conn:
        if not revoke_agent(conn, agent):
            raise fail(f"no enrolled, unrevoked agent {agent!r}")
    console.print(f"revoked agent {agent}; its reports and leases are refused from now on")
