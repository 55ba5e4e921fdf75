"""Server input power read from BMCs over Redfish (httpx).

Each configured BMC becomes one IT meter (role ``it``, measures ``server_input``). The probe finds
a chassis that reports power (the configured one, or the first in ``/redfish/v1/Chassis`` that
links ``EnvironmentMetrics`` or ``Power``) and remembers where its readings live, so a steady
cycle costs one or two GETs per BMC:

- ``EnvironmentMetrics`` (Redfish 2021.1 and later) is preferred: ``PowerWatts.Reading`` for
  power and ``EnergyJoules.Reading`` or ``EnergykWh.Reading`` for the energy counter.
- The older ``Power`` resource fills in power when EnvironmentMetrics is absent or carries no
  power reading: the first ``PowerControl[]`` entry with ``PowerConsumedWatts``. Later entries
  may cover subsets of the same chassis (a CPU domain, say), so they are not added up.

Authentication is HTTP basic or a Redfish session (``POST /redfish/v1/SessionService/Sessions``,
then ``X-Auth-Token``); the session is kept between cycles, renewed once when the BMC answers
401, and deleted by ``close()``; a BMC without a session service (404 or 405 on the login) is
reported with the hint to use ``auth = "basic"``. TLS certificates are verified by default,
against the system store or a configured CA bundle. Every request is bounded by the BMC's
``timeout_s``; a BMC that fails is reported in ``errors`` and the others still read.
"""

from __future__ import annotations

import contextlib
import ssl
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from agents.probe import Point, Reading
from jinsuan.contract.metrics import CATALOGUE
from jinsuan.contract.wire import Ident, MeterInfo, MeterRole

POWER_METRIC = "meter_power_watts"
ENERGY_METRIC = "meter_energy_joules_total"
SESSIONS_PATH = "/redfish/v1/SessionService/Sessions"
CHASSIS_PATH = "/redfish/v1/Chassis"
_MAX_PARALLEL = 8


class RedfishBmcConfig(BaseModel):
    """One BMC; its server's input power is reported as an IT meter with this id."""

    model_config = ConfigDict(extra="forbid")

    id: Ident = Field(description="Meter id for this server's power series.")
    base_url: str = Field(pattern=r"^https?://[^/]+/?$", description="e.g. https://10.0.8.21")
    username: str = Field(min_length=1)
    password: SecretStr
    auth: Literal["session", "basic"] = Field(
        default="session", description="Redfish session (X-Auth-Token) or HTTP basic auth."
    )
    verify_tls: bool = Field(
        default=True, description="Verify the BMC's certificate. Turn off only on a closed "
        "management network, and prefer ca_bundle."
    )
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of CAs to trust instead of the system store."
    )
    chassis: str | None = Field(
        default=None, description="Chassis Id to read; default: the first that reports power."
    )
    racks: list[Ident] = Field(default_factory=list, description="Rack this server sits in.")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Bound on each request.")

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA bundle {value} is not a readable file")
        return value


class RedfishConfig(BaseModel):
    """The ``[probes.redfish]`` section: the BMCs one Redfish probe reads."""

    model_config = ConfigDict(extra="forbid")

    bmcs: list[RedfishBmcConfig] = Field(min_length=1)

    @field_validator("bmcs")
    @classmethod
    def _unique_ids(cls, bmcs: list[RedfishBmcConfig]) -> list[RedfishBmcConfig]:
        ids = [b.id for b in bmcs]
        for dup in {i for i in ids if ids.count(i) > 1}:
            raise ValueError(f"BMC id {dup!r} appears more than once")
        return bmcs


class BmcError(Exception):
    """A BMC could not be read; the message says which request failed and why."""


class _Bmc:
    """One BMC: its HTTP client, its session and where its power readings live."""

    def __init__(self, config: RedfishBmcConfig) -> None:
        self.config = config
        verify: ssl.SSLContext | bool = config.verify_tls
        if config.ca_bundle is not None and config.verify_tls:
            verify = ssl.create_default_context(cafile=str(config.ca_bundle))
        password = config.password.get_secret_value()
        self.client = httpx.Client(
            base_url=config.base_url.rstrip("/"),
            verify=verify,
            timeout=config.timeout_s,
            auth=(config.username, password) if config.auth == "basic" else None,
            headers={"Accept": "application/json"},
            follow_redirects=True,  # services may redirect an alias (Id to UUID, say)
        )
        self.session_uri: str | None = None
        self.env_url: str | None = None
        self.power_url: str | None = None

    # -- reading --------------------------------------------------------------------------

    def read(self) -> tuple[list[Point], list[str]]:
        where = f"BMC {self.config.id} ({self.config.base_url})"
        try:
            if self.env_url is None and self.power_url is None:
                self._discover()
            values = self._read_values()
        except BmcError as exc:
            return [], [f"{where}: {exc}"]
        points: list[Point] = []
        errors: list[str] = []
        for metric, (value, source) in values.items():
            problem = CATALOGUE[metric].check(value)
            if problem is None:
                points.append(Point(metric, self.config.id, value))
            else:
                errors.append(f"{where}: {metric} from {source} rejected: {problem}")
        return points, errors

    def _discover(self) -> None:
        if self.config.chassis is not None:
            url = f"{CHASSIS_PATH}/{self.config.chassis}"
            if not self._adopt(self._get(url)):
                raise BmcError(f"chassis {url} links neither EnvironmentMetrics nor Power")
            return
        members = self._get(CHASSIS_PATH).get("Members", [])
        for member in members:
            url = member.get("@odata.id")
            if url and self._adopt(self._get(url)):
                return
        raise BmcError(
            f"none of the {len(members)} chassis in {CHASSIS_PATH} links "
            "EnvironmentMetrics or Power"
        )

    def _adopt(self, chassis: dict[str, Any]) -> bool:
        self.env_url = _link(chassis, "EnvironmentMetrics")
        self.power_url = _link(chassis, "Power")
        return self.env_url is not None or self.power_url is not None

    def _read_values(self) -> dict[str, tuple[float, str]]:
        values: dict[str, tuple[float, str]] = {}
        if self.env_url is not None:
            env = self._get(self.env_url)
            watts = _reading(env, "PowerWatts")
            if watts is not None:
                values[POWER_METRIC] = (watts, f"{self.env_url} PowerWatts")
            joules = _reading(env, "EnergyJoules")
            kwh = _reading(env, "EnergykWh")
            if joules is not None:
                values[ENERGY_METRIC] = (joules, f"{self.env_url} EnergyJoules")
            elif kwh is not None:
                values[ENERGY_METRIC] = (kwh * 3.6e6, f"{self.env_url} EnergykWh")
        if POWER_METRIC not in values and self.power_url is not None:
            controls = self._get(self.power_url).get("PowerControl") or []
            for index, control in enumerate(controls):
                watts = control.get("PowerConsumedWatts")
                if isinstance(watts, int | float):
                    source = f"{self.power_url} PowerControl[{index}].PowerConsumedWatts"
                    values[POWER_METRIC] = (float(watts), source)
                    break
        if not values:
            raise BmcError(
                "chassis reports no power or energy reading (EnvironmentMetrics: "
                f"{self.env_url or 'absent'}, Power: {self.power_url or 'absent'})"
            )
        return values

    # -- HTTP and sessions ----------------------------------------------------------------

    def _get(self, path: str) -> dict[str, Any]:
        if self.config.auth == "session" and self.session_uri is None:
            self._login()
        response = self._request("GET", path)
        if response.status_code == 401 and self.config.auth == "session":
            self._login()  # the BMC dropped our session (timeout, reboot): log in once more
            response = self._request("GET", path)
        if response.status_code == 404:
            self.env_url = self.power_url = None  # the layout changed: discover again next cycle
        if response.status_code != 200:
            raise BmcError(f"GET {path} returned HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise BmcError(f"GET {path} returned a body that is not JSON") from exc
        if not isinstance(body, dict):
            raise BmcError(f"GET {path} returned JSON that is not an object")
        return body

    def _login(self) -> None:
        self.client.headers.pop("X-Auth-Token", None)
        self.session_uri = None
        response = self._request(
            "POST",
            SESSIONS_PATH,
            json={
                "UserName": self.config.username,
                "Password": self.config.password.get_secret_value(),
            },
        )
        if response.status_code not in (200, 201):
            # Older and stripped-down BMCs have no SessionService: the login URL is not found,
            # or takes no POST, yet the same BMC answers GETs with HTTP basic auth.
            hint = (' (this BMC has no Redfish session service: set auth = "basic")'
                    if response.status_code in (404, 405) else "")
            raise BmcError(f"session login at {SESSIONS_PATH} returned HTTP "
                           f"{response.status_code}{hint}")
        token = response.headers.get("X-Auth-Token")
        if not token:
            raise BmcError(f"session login at {SESSIONS_PATH} returned no X-Auth-Token")
        self.client.headers["X-Auth-Token"] = token
        location = response.headers.get("Location")
        if location is None:
            location = _json_or_empty(response).get("@odata.id")
        self.session_uri = location

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise BmcError(
                f"{method} {path}: no answer within {self.config.timeout_s:g} s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise BmcError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Delete the Redfish session, if any, and close the connection."""
        if self.session_uri is not None:
            with contextlib.suppress(httpx.HTTPError):  # the BMC expires abandoned sessions
                self.client.delete(self.session_uri)
            self.session_uri = None
        self.client.close()


def _link(resource: dict[str, Any], name: str) -> str | None:
    link = resource.get(name)
    if isinstance(link, dict) and isinstance(link.get("@odata.id"), str):
        return link["@odata.id"]
    return None


def _reading(resource: dict[str, Any], name: str) -> float | None:
    excerpt = resource.get(name)
    if isinstance(excerpt, dict) and isinstance(excerpt.get("Reading"), int | float):
        return float(excerpt["Reading"])
    return None


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class RedfishProbe:
    """Reads each configured BMC's server power once per cycle, in parallel."""

    name = "redfish"

    def __init__(self, config: RedfishConfig) -> None:
        self.config = config
        self._bmcs = [_Bmc(bmc) for bmc in config.bmcs]

    def read(self, now: datetime) -> Reading:
        reading = Reading()
        with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(self._bmcs))) as pool:
            results = list(pool.map(_Bmc.read, self._bmcs))
        for bmc, (points, errors) in zip(self._bmcs, results, strict=True):
            reading.meters.append(MeterInfo(
                id=bmc.config.id, role=MeterRole.IT, measures="server_input",
                racks=bmc.config.racks,
            ))
            reading.points.extend(points)
            reading.errors.extend(errors)
        return reading

    def close(self) -> None:
        """Log out of every BMC; call once when the agent stops."""
        for bmc in self._bmcs:
            bmc.close()
