"""Real servers on free loopback ports for a test: the platform (any ASGI app), Prometheus."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(app: Any, *, stop_timeout_s: float = 30) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yield its base URL; stop it on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout_s)


@contextmanager
def running_prometheus(
    work: Path, jobs: Mapping[str, Sequence[str] | Mapping[str, Any]], *, min_scrapes: int = 3
) -> Iterator[str]:
    """Debian's Prometheus scraping ``jobs`` (job name -> ``host:port`` targets) every second.

    Yields its base URL once every target has been scraped ``min_scrapes`` times, so that a
    ``rate()`` has points in its window. Skips the test where the binary is not installed.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [_scrape_config(job, spec) for job, spec in jobs.items()],
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = work / "prometheus.log"
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    targets = sum(len(_scrape_config(job, spec)["static_configs"][0]["targets"])
                  for job, spec in jobs.items())
    try:
        deadline = time.monotonic() + 60
        while not _scraped(url, targets, min_scrapes):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "Prometheus never scraped every target"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _scrape_config(job: str, spec: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A job's targets, or a mapping of ``targets`` and further scrape options (``metrics_path``,
    ``authorization``)."""
    if isinstance(spec, Mapping):
        options = {k: v for k, v in spec.items() if k != "targets"}
        return {"job_name": job, "static_configs": [{"targets": list(spec["targets"])}],
                **options}
    return {"job_name": job, "static_configs": [{"targets": list(spec)}]}


def _scraped(url: str, targets: int, times: int) -> bool:
    try:
        # Until its storage is open Prometheus answers 503 with a plain-text body.
        response = httpx.get(f"{url}/api/v1/query", timeout=2, params={
            "query": "count_over_time(up[1m]) and up == 1"})
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    result = response.json()["data"]["result"]
    return len(result) == targets and all(float(r["value"][1]) >= times for r in result)
