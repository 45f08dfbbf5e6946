"""Log-index retention over N indices (default 3,000) with 2 ms latency per request:
the janitor against elasticsearch-curator 9 (`delete_indices`, age filter on
`creation_date`), on the same Elasticsearch stand-in in the same run.

    .venv/bin/python -m benchmarks.logs_bench [N] [--latency-ms 2] [--concurrency 8]

Curator goes into its own throwaway venv under .benchmarks/ (its pins may clash with
ours); when it cannot be installed, the janitor's numbers are still reported. The stand-in
plays Elasticsearch 9.1, which serves Curator 9's client natively and the janitor's 8.x
client through REST compatibility. Exits 1 when the janitor sends more than
1 + ceil(bytes of names / 4 KB) requests plus the product check, or is not at least 50x
faster than Curator.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._fleet import seed_indices
from janitor.clients.elasticsearch import connect_elasticsearch, verify_elasticsearch
from janitor.sweepers.logs import plan_logs
from tests.es_standin import ElasticsearchStandin, running_standin

CURATOR = "elasticsearch-curator==9.0.0"
VENV = Path(".benchmarks") / "curator-9.0.0"
PATTERNS = ("fluentd.*", "vector.*")
RETENTION_DAYS = 15
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TARGET_SPEEDUP = 50
ADJECTIVES = ("celestial", "nebular", "stellar", "orbital", "lunar", "solar", "galactic", "cosmic")
NOUNS = ("quasar", "pulsar", "nova", "comet", "eclipse", "flare", "halo")
# 50 Astronomer-style release names (adjective-noun-number).
RELEASES = tuple(
    f"{a}-{n}-{1000 + i}" for i, (a, n) in enumerate(zip(ADJECTIVES * 7, NOUNS * 8, strict=True))
)[:50]
CURATOR_SCRIPT = """
import json, logging, sys, time
from elasticsearch9 import Elasticsearch
from curator import DeleteIndices, IndexList
logging.disable(logging.CRITICAL)
url, pattern, epoch, days = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
client = Elasticsearch(url, request_timeout=120)
client.info()
indices = IndexList(client, search_pattern=pattern)
indices.filter_by_age(
    source="creation_date", direction="older", unit="days", unit_count=days, epoch=epoch
)
DeleteIndices(indices).do_action()
print(json.dumps({"seconds": time.perf_counter() - start, "selected": len(indices.indices)}))
"""


@dataclass(frozen=True)
class Measure:
    seconds: float
    requests: int
    deleted: int


def seed(standin: ElasticsearchStandin, count: int) -> list[str]:
    """``count`` indices, one a day per release and shipper, newest first; the expired ones."""
    return seed_indices(standin, count, RELEASES, NOW, retention_days=RETENTION_DAYS)


def run_janitor(standin: ElasticsearchStandin, concurrency: int) -> Measure:
    before = len(standin.requests)
    start = time.perf_counter()
    es = connect_elasticsearch(
        standin.url, username=None, password=None, api_key=None, ca_bundle=None
    )
    verify_elasticsearch(es, standin.url)
    steps = plan_logs(
        es,
        patterns=PATTERNS,
        retention_days=RETENTION_DAYS,
        age_source="creation_date",
        timestring="%Y.%m.%d",
        now=NOW,
    )
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = [
            r for batch in pool.map(lambda s: s.run() if s.run else [], steps) for r in batch
        ]
    seconds = time.perf_counter() - start
    assert all(r.outcome == "done" for r in results), results
    return Measure(seconds, len(standin.requests) - before, len(results))


def curator_python() -> Path | None:
    """Curator's venv interpreter, installing it on first use; None when that fails."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"installing {CURATOR} into {VENV} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "--quiet", CURATOR],
            check=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as error:
        print(f"Curator could not be installed ({error}); reporting the janitor only")
        return None
    return python


def run_curator(standin: ElasticsearchStandin, python: Path, now: datetime = NOW) -> Measure | None:
    """Curator's ``delete_indices`` in a process of its own; ``seconds`` is its time from
    after its imports (the process as a whole is what its caller times)."""
    before = len(standin.requests)
    done = subprocess.run(
        [
            str(python),
            "-c",
            CURATOR_SCRIPT,
            standin.url,
            ",".join(PATTERNS),
            str(int(now.timestamp())),
            str(RETENTION_DAYS),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        print(f"Curator failed:\n{done.stderr[-2000:]}")
        return None
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return Measure(answer["seconds"], len(standin.requests) - before, answer["selected"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="logs_bench")
    parser.add_argument("count", nargs="?", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with running_standin(version="9.1.0", latency_s=args.latency_ms / 1000) as standin:
        expired = seed(standin, args.count)
        kept = standin.index_names() - set(expired)
        janitor = run_janitor(standin, args.concurrency)
        janitor_left = standin.index_names()

        python = curator_python()
        standin.clear()
        seed(standin, args.count)
        curator = run_curator(standin, python) if python else None
        curator_left = standin.index_names() if curator else None

    name_bytes = len(",".join(expired))
    bound = 1 + math.ceil(name_bytes / 4096) + 1
    print(
        f"log indices: {args.count} indices, {len(expired)} past {RETENTION_DAYS} days, "
        f"{args.latency_ms:g} ms per request, stand-in as Elasticsearch 9.1"
    )
    print("tool | wall s | requests | deleted")
    print(f"janitor | {janitor.seconds:.3f} | {janitor.requests} | {janitor.deleted}")
    failures = []
    if janitor_left != kept:
        failures.append("the janitor did not leave exactly the young indices")
    if janitor.requests > bound:
        failures.append(f"janitor sent {janitor.requests} requests, bound {bound}")
    if curator is not None:
        speedup = curator.seconds / janitor.seconds
        print(f"curator 9 | {curator.seconds:.3f} | {curator.requests} | {curator.deleted}")
        fewer = curator.requests / janitor.requests
        print(f"janitor is {speedup:.0f}x faster and sends {fewer:.0f}x fewer requests")
        if curator_left != janitor_left:
            failures.append("Curator and the janitor left different indices")
        if speedup < TARGET_SPEEDUP:
            failures.append(f"speedup {speedup:.0f}x is under the {TARGET_SPEEDUP}x target")
    print(
        f"janitor requests bound: 1 listing + ceil({name_bytes} B of names / 4096) deletes "
        f"+ 1 product check = {bound}"
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
