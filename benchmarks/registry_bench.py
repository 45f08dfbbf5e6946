"""Registry sweep: the janitor against a strictly sequential "GET digest, then DELETE" loop
(what Astronomer's own cleanup does), same registry, same run.

    .venv/bin/python -m benchmarks.registry_bench [--deployments 100] [--tags 20]
        [--latency-ms 10] [--concurrency 8]

A real docker-registry (distribution 2.8.2) on loopback, seeded through the API with two
identical fleets of expired deployments: per deployment, single-arch images, Docker
manifest lists, OCI indexes and tags sharing a digest. Both sweeps go through a loopback
proxy (its own process) that adds the latency of a registry across a network and counts
every request. Afterwards the registry itself says how many tags each sweep left behind.
Exits 1 when a target is missed: >= 4x faster, <= 2 manifest requests per tag, 0 tags left.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._fleet import (
    RemoteProxy,
    cpu_seconds,
    remote_proxy,
    seed_registry,
    sequential_sweep,
)
from janitor.clients.http import HttpOptions
from janitor.clients.registry import connect_registry
from janitor.naming import Templates
from janitor.plan import Deployment, Result
from janitor.sweepers.registry import plan_registry
from tests.registry_server import Registry, run_registry

TEMPLATE = Templates("{release_snake}_airflow", (), repository="{release}/airflow")
SPEEDUP_TARGET = 4.0
MANIFEST_REQUESTS_PER_TAG = 2.0


# --- the janitor's sweep (the sequential one is benchmarks._fleet.sequential_sweep) ----


def janitor_sweep(url: str, releases: list[str], concurrency: int) -> list[Result]:
    """What ``janitor run`` does for the registry: plan (list + HEAD), run each deployment's
    step from the runner's pool, then check every repository is empty."""
    client = connect_registry(
        url,
        username=None,
        password=None,
        token=None,
        ca_bundle=None,
        options=HttpOptions(pool_size=concurrency),
    )
    deployments = [Deployment(f"id-{r}", r, "2024-01-01T00:00:00Z") for r in releases]
    with (
        ThreadPoolExecutor(concurrency, "http") as http,
        ThreadPoolExecutor(concurrency, "runner") as runner,
    ):
        works = plan_registry(client, deployments, TEMPLATE, http)

        def settle(work: Any) -> list[Result]:
            results = [r for s in work.steps if s.run for r in s.run()]
            leftover = work.remaining[0]()
            if leftover is not None:
                raise RuntimeError(leftover)
            return results

        futures = [runner.submit(settle, w) for w in works.values()]
        return [r for f in futures for r in f.result()]


# --- measuring -------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    name: str
    seconds: float
    counts: Counter[str]
    tags_left: int
    registry_cpu_s: float
    proxy_cpu_s: float
    client_cpu_s: float

    @property
    def manifest_requests(self) -> int:
        return sum(n for k, n in self.counts.items() if k.endswith(" manifests"))

    @property
    def requests(self) -> int:
        return sum(self.counts.values())


def measure(
    name: str,
    sweep: Callable[[], object],
    registry: Registry,
    proxy: RemoteProxy,
    releases: list[str],
) -> Measured:
    proxy.reset()
    cpu = (cpu_seconds(registry.process.pid), cpu_seconds(proxy.pid), time.process_time())
    started = time.perf_counter()
    sweep()
    seconds = time.perf_counter() - started
    used = (cpu_seconds(registry.process.pid), cpu_seconds(proxy.pid), time.process_time())
    counts = proxy.counts()
    pusher = registry.pusher()
    left = sum(len(pusher.tags(f"{r}/airflow") or []) for r in releases)
    registry_cpu, proxy_cpu, client_cpu = (b - a for a, b in zip(cpu, used, strict=True))
    return Measured(name, seconds, counts, left, registry_cpu, proxy_cpu, client_cpu)


def run(deployments: int, tags: int, latency_ms: float, concurrency: int) -> bool:
    with (
        tempfile.TemporaryDirectory(prefix="registry-bench-") as directory,
        run_registry(Path(directory)) as registry,
        remote_proxy(registry.url, latency_ms / 1000) as proxy,
    ):
        sequential = [f"seq-{i}" for i in range(deployments)]
        janitor = [f"jan-{i}" for i in range(deployments)]
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            pusher = registry.pusher()
            seed_registry(pusher, sequential, tags, pool)
            seed_registry(pusher, janitor, tags, pool)
        print(
            f"seeded 2 x {deployments} deployments x {tags} tags "
            f"in {time.perf_counter() - started:.1f} s; proxy adds {latency_ms:g} ms per request"
        )
        rows = [
            measure(
                "sequential GET+DELETE",
                lambda: sequential_sweep(proxy.url, sequential),
                registry,
                proxy,
                sequential,
            ),
            measure(
                f"janitor concurrency={concurrency}",
                lambda: janitor_sweep(proxy.url, janitor, concurrency),
                registry,
                proxy,
                janitor,
            ),
        ]
    total = deployments * tags
    print()
    print(
        "| sweep | wall s | requests | manifest req/tag | CPU ms/req: registry / proxy / "
        f"client | tags left of {total} |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        per_request = [
            f"{1000 * cpu / max(row.requests, 1):.2f}"
            for cpu in (row.registry_cpu_s, row.proxy_cpu_s, row.client_cpu_s)
        ]
        print(
            f"| {row.name} | {row.seconds:.2f} | {row.requests} "
            f"| {row.manifest_requests / total:.2f} | {' / '.join(per_request)} "
            f"| {row.tags_left} |"
        )
    baseline, ours = rows
    speedup = baseline.seconds / ours.seconds
    per_tag = ours.manifest_requests / total
    print()
    print(f"speedup {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x)")
    checks = {
        f"speedup >= {SPEEDUP_TARGET:g}x": speedup >= SPEEDUP_TARGET,
        f"manifest requests per tag <= {MANIFEST_REQUESTS_PER_TAG:g}": per_tag
        <= MANIFEST_REQUESTS_PER_TAG,
        "janitor left no tag": ours.tags_left == 0,
    }
    for check, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'} {check}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--tags", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    return 0 if run(args.deployments, args.tags, args.latency_ms, args.concurrency) else 1


if __name__ == "__main__":
    sys.exit(main())
