"""`make bench`: every benchmark in turn; exits non-zero when one misses its target."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("deployments_bench", "registry_bench", "logs_bench", "backup_bench", "audit_bench")


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"\nmissed their targets: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
