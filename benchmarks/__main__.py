"""`make bench`: every benchmark in turn, or the ones named (`python -m benchmarks
fleet_bench`); exits non-zero when one misses its target."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "deployments_bench",
    "registry_bench",
    "logs_bench",
    "backup_bench",
    "audit_bench",
    "fleet_bench",
)


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in argv or BENCHMARKS:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"\nmissed their targets: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
