"""A real site agent for end-to-end tests: enrolled with the platform over HTTP, as an operator
would enrol it, and configured with the simulated probe."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from agents.config import AgentConfig, load_config
from agents.identity import Identity, enrol
from tests.collectors_kit import bearer, make_org


def enrolled_simulated_agent(
    conn: psycopg.Connection, platform_url: str, workdir: Path, *, site: str, city: str,
    enterprise: str, seed: int, fleet: dict[str, int],
) -> tuple[AgentConfig, Identity]:
    """Make the site, enrol an agent for it into ``workdir``, and load its config file."""
    org = make_org(conn, enterprise, site, city)
    made = httpx.post(f"{platform_url}/v1/sites/{org.site.id}/enrolment-tokens",
                      headers=bearer(org.operator_key), timeout=10)
    assert made.status_code == 201, made.text
    identity = enrol(workdir / "state", platform_url, made.json()["token"])
    models = ", ".join(f'"{model}" = {count}' for model, count in fleet.items())
    config_path = workdir / "site.toml"
    config_path.write_text(f"""
[site]
name = "{site}"

[agent]
platform_url = "{platform_url}"
state_dir = "state"
interval_s = 10

[[probes.simulated]]
seed = {seed}
fleet = {{ {models} }}
""", encoding="utf-8")
    return load_config(config_path), identity
