"""Real servers on free loopback ports for a test: the platform (any ASGI app, or ``jinsuan
serve`` as a process of its own), Prometheus."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Served:
    """A ``jinsuan serve`` process: its URL, and its output (stdout and stderr) in ``log``."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def jinsuan_serve(database_url: str, work: Path, **environment: str) -> Iterator[Served]:
    """Run ``jinsuan serve`` on ``database_url`` as the platform runs in production, with its
    background jobs (the placement cycle, the lease sweep); yield once it answers ``/healthz``;
    stop it on exit (SIGTERM, as a service manager does; SIGKILL if it has not ended in 30 s).

    Its settings are the platform's defaults and the ``JINSUAN_*`` variables in
    ``environment``: those inherited from the test's own environment are dropped, so a
    scheduler setting exported in a shell cannot change what a test measures.
    """
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / f"serve-{port}.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("JINSUAN_")}
    env.update(DATABASE_URL=database_url, JINSUAN_PORT=str(port),
               JINSUAN_DATA_DIR=str(work / f"data-{port}"), **environment)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while not _answers(served.url):
            tail = served.output()[-4000:]
            assert process.poll() is None, f"jinsuan serve exited:\n{tail}"
            assert time.monotonic() < deadline, f"jinsuan serve never answered:\n{tail}"
            time.sleep(0.1)
        yield served
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a service manager stops it; SIGKILL if it is still there after 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
