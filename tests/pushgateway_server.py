"""A real Prometheus Pushgateway (Debian's prometheus-pushgateway) for the tests, and a real
Prometheus scraping it the way the platform's does; both on loopback ports picked at runtime."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.loopback import free_port, stop
from tests.prometheus_server import hashed_users, running_prometheus, wait_for_line

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
# Prometheus scrapes every second: a pushed value shows up in a query within a few.
SCRAPE_INTERVAL = "1s"
QUERY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Pushgateway:
    """A running Pushgateway: ``url`` is what the janitor is given, ``address`` host:port."""

    address: str
    auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        if self.auth is None:
            return f"http://{self.address}"
        return f"http://{self.auth[0]}:{self.auth[1]}@{self.address}"

    def groups(self) -> list[dict[str, Any]]:
        """Every group the gateway holds (its API: labels and metric families)."""
        answer = requests.get(f"http://{self.address}/api/v1/metrics", auth=self.auth, timeout=10)
        answer.raise_for_status()
        data: list[dict[str, Any]] = answer.json()["data"]
        return data


@contextmanager
def running_pushgateway(
    workdir: Path, auth: tuple[str, str] | None = None
) -> Iterator[Pushgateway]:
    """A Pushgateway without persistence; with ``auth`` (user, password) it asks every
    request for basic auth."""
    workdir.mkdir(parents=True)
    port = free_port()
    command = [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    if auth is not None:
        web_file = workdir / "web.yml"
        web_file.write_text(json.dumps({"basic_auth_users": hashed_users(dict([auth]))}))
        command.append(f"--web.config.file={web_file}")
    log = workdir / "pushgateway.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_line(process, log, "Listening on")
        yield Pushgateway(f"127.0.0.1:{port}", auth)
    finally:
        stop(process)


@contextmanager
def prometheus_scraping(workdir: Path, gateway: Pushgateway) -> Iterator[str]:
    """A real Prometheus scraping ``gateway`` as a Pushgateway must be scraped: with
    ``honor_labels``, so the pushed ``job`` and ``instance`` are kept."""
    job: dict[str, Any] = {
        "job_name": "pushgateway",
        "honor_labels": True,
        "scrape_interval": SCRAPE_INTERVAL,
        "static_configs": [{"targets": [gateway.address]}],
    }
    if gateway.auth is not None:
        job["basic_auth"] = {"username": gateway.auth[0], "password": gateway.auth[1]}
    with running_prometheus(workdir, scrape_configs=[job]) as url:
        yield url


GROUP_LABELS = frozenset({"__name__", "job", "instance"})


def query(prometheus: str, promql: str) -> dict[str, float]:
    """The instant vector ``promql`` evaluates to, keyed like ``name{label="value"}`` with
    the group's labels (job, instance) left out: the query selects them."""
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    answer.raise_for_status()
    found = {}
    for sample in answer.json()["data"]["result"]:
        labels = sample["metric"]
        rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k not in GROUP_LABELS)
        found[labels.get("__name__", "") + (f"{{{rest}}}" if rest else "")] = float(
            sample["value"][1]
        )
    return found


def query_until(
    prometheus: str, promql: str, wanted: Callable[[dict[str, float]], bool]
) -> dict[str, float]:
    """Queries until ``wanted(result)`` holds (the next scrape brings a push in), bounded."""
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        result = query(prometheus, promql)
        if wanted(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)
