"""Edge terminals: how many distinct terminals an edge site has served this calendar year.

Measure 3 of the policy rewards edge computing centres serving at least 300,000 terminals in a
year. Only the operator's own systems know that count, so the agent reads it from where the
operator keeps it: a counter file (a plain integer, or JSON with the count under a key path) or
an HTTP(S) endpoint answering JSON. The value is reported as ``site_terminals_served`` for device
``"site"``, and the reading marks the site as an edge site.

A ``year_key`` lets the probe check that the count belongs to the current calendar year (in the
site's time zone, Asia/Shanghai by default), so a counter that was not reset in January is not
reported as this year's. Every failure is reported in ``errors`` naming the file or URL. An HTTP
read waits at most ``timeout_s`` for any step and gives up once ``timeout_s`` has passed in all,
so even a peer that drips its answer costs a cycle at most twice ``timeout_s``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from agents.probe import Point, Reading

MAX_DOCUMENT_BYTES = 1 << 20


class TerminalsConfig(BaseModel):
    """The ``[probes.terminals]`` table of the agent's config file: exactly one of file or url."""

    model_config = ConfigDict(extra="forbid")

    file: Path | None = Field(default=None, description="Counter file: an integer, or JSON.")
    url: HttpUrl | None = Field(default=None, description="HTTP(S) endpoint answering JSON.")
    key: str | None = Field(
        default=None,
        description="Dotted path to the count in the JSON document, e.g. 'edge.terminals_year'; "
        "leave out when the document is the bare integer.",
    )
    year_key: str | None = Field(
        default=None, description="Dotted path to the calendar year the count is for (checked)."
    )
    timezone: str = Field(default="Asia/Shanghai", description="Time zone of the calendar year.")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Bound on one HTTP read.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP request headers, e.g. Authorization."
    )
    verify_tls: bool = Field(default=True, description="Verify the endpoint's TLS certificate.")

    @model_validator(mode="after")
    def _one_source(self) -> TerminalsConfig:
        if (self.file is None) == (self.url is None):
            raise ValueError("give exactly one of 'file' or 'url'")
        if self.file is not None and (self.headers or not self.verify_tls):
            raise ValueError("'headers' and 'verify_tls' apply to 'url' only")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("key", "year_key")
    @classmethod
    def _key_path(cls, value: str | None) -> str | None:
        if value is not None and not all(value.split(".")):
            raise ValueError(f"key path {value!r} has an empty part")
        return value


class _Unreadable(Exception):
    """The count could not be read; the message says why (the caller adds where)."""


def _at(document: Any, path: str) -> Any:
    value = document
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            where = f" (found {'.'.join(walked)})" if walked else ""
            raise _Unreadable(f"key {path!r} not found{where}")
        walked.append(part)
    return value


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unreadable(f"{what} {value!r} is not a whole number")
    if value < 0:
        raise _Unreadable(f"{what} {value} is negative")
    return value


class TerminalsProbe:
    """Reads the operator's terminal counter once per cycle."""

    name = "terminals"

    def __init__(self, config: TerminalsConfig, client: httpx.Client | None = None) -> None:
        self._config = config
        self._zone = ZoneInfo(config.timezone)
        self._where = str(config.file) if config.file is not None else str(config.url)
        self._client = client
        if config.url is not None and client is None:
            self._client = httpx.Client(
                timeout=config.timeout_s,
                verify=config.verify_tls,
                headers=config.headers,
                follow_redirects=False,
            )

    def read(self, now: datetime) -> Reading:
        reading = Reading(edge=True)
        try:
            count = self._count(self._document(), now)
        except _Unreadable as err:
            reading.errors.append(f"terminals: {self._where}: {err}")
            return reading
        reading.points.append(Point("site_terminals_served", "site", float(count)))
        return reading

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _count(self, text: str, now: datetime) -> int:
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            raise _Unreadable(f"not an integer or JSON: {text[:60]!r}") from None
        key = self._config.key
        count = _whole_number(_at(document, key) if key else document, "count")
        if self._config.year_key is not None:
            year = _whole_number(_at(document, self._config.year_key), "year")
            current = now.astimezone(self._zone).year
            if year != current:
                raise _Unreadable(f"the count is for {year}, not the current year {current}")
        return count

    def _document(self) -> str:
        if self._config.file is not None:
            return self._read_file(self._config.file)
        return self._fetch(str(self._config.url))

    @staticmethod
    def _read_file(path: Path) -> str:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as err:
            raise _Unreadable(f"cannot read: {err.strerror or err}") from err
        if len(data) > MAX_DOCUMENT_BYTES:
            raise _Unreadable(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise _Unreadable("not UTF-8 text") from None

    def _fetch(self, url: str) -> str:
        assert self._client is not None
        timeout = self._config.timeout_s
        deadline = time.monotonic() + timeout
        body = bytearray()
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise _Unreadable(f"HTTP {response.status_code} {response.reason_phrase}")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _Unreadable(f"answer larger than {MAX_DOCUMENT_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise _Unreadable(f"answer not complete within {timeout:g} s")
        except httpx.TimeoutException:
            raise _Unreadable(f"no answer within {timeout:g} s") from None
        except httpx.HTTPError as err:
            raise _Unreadable(f"cannot fetch: {err}") from None
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise _Unreadable("answer is not UTF-8 text") from None
