"""Shards: which of n janitor pods sweeps which deployments (README "Sharding").

A deployment belongs to shard ``int(sha256(release name)[:8], big-endian) mod n``: the same
in every process, Python version and machine (Python's own ``hash()`` of a string is salted
per process), so `plan` and `run` and every pod agree, and each release name falls in
exactly one shard. A row with no release name counts as the name ``""``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Far beyond what one Houston database needs (README "Sharding": the Airflow database
# servers' DROP DATABASE throughput is the bound), and a bound on the pods one run starts.
MAX_SHARDS = 64
# Set by Kubernetes in every pod of an Indexed Job: the pod's index, 0 to completions - 1.
JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
_SPEC = re.compile(r"([0-9]{1,4})/([0-9]{1,4})")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 ≤ index < count ≤ MAX_SHARDS); 0/1 is the whole fleet."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def first(self) -> bool:
        """Shard 0 also does the work done once per fleet: logs, metrics, backup retention."""
        return self.index == 0

    def owns(self, release: str) -> bool:
        """Whether the deployment named ``release`` is this shard's to sweep."""
        return shard_of(release, self.count) == self.index

    def name(self, base: str) -> str:
        """``base`` made this shard's own (the run's Kubernetes Lease); ``base`` unsharded."""
        return f"{base}-shard-{self.index}-of-{self.count}" if self.sharded else base


WHOLE_FLEET = Shard()


def shard_of(release: str, count: int) -> int:
    """The shard, of ``count``, that the deployment named ``release`` belongs to."""
    digest = hashlib.sha256(release.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """``INDEX/COUNT`` (``1/3``) as a Shard; ValueError saying what is allowed otherwise."""
    found = _SPEC.fullmatch(text)
    index, count = (int(found[1]), int(found[2])) if found else (-1, 0)
    if not 0 <= index < count <= MAX_SHARDS:
        raise ValueError(f"must be INDEX/COUNT with 0 <= INDEX < COUNT <= {MAX_SHARDS}, e.g. 0/3")
    return Shard(index, count)
