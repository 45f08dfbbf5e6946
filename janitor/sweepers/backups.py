"""Backup retention (README "Final backups and restore"): final backups older than
JANITOR_BACKUP_RETENTION_DAYS are deleted, one ``backup.delete`` event each, counted by the
guard, except the backups of a release that still has a row in the Houston table (the
deployment was restored, or its row is kept for a reason an operator must see).

Age is measured against the run's clock (the Houston database server's) from the UTC time
that names each backup's directory, so an incomplete backup (a run killed mid-dump) ages
out like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from janitor.backup import Listed, listed
from janitor.clients.backupstore import BackupStore, StoreError
from janitor.plan import Action, Result, Step, Sweeper, failed, final, single, skipped

EVENT = "backup.delete"


def sweeper(
    store: Callable[[], BackupStore],
    url: str,
    *,
    now: datetime,
    retention_days: int,
    releases: Callable[[], frozenset[str]],
) -> Sweeper:
    """``releases``: the release names that still have a row (read once per plan)."""

    def plan() -> list[Step]:
        try:
            opened = store()
            backups = listed(opened)
        except StoreError as exc:
            return [final(Action(EVENT, url, failed(str(exc))))]
        cutoff = now - timedelta(days=retention_days)
        old = [b for b in backups if b.created <= cutoff]
        kept = releases() if old else frozenset()
        return [_step(opened, b, now, kept) for b in old]

    def problems() -> list[str]:
        try:
            return store().problems()
        except StoreError as exc:
            return [str(exc)]

    return Sweeper("backups", EVENT, plan, problems)


def _step(store: BackupStore, backup: Listed, now: datetime, kept: frozenset[str]) -> Step:
    fields = {"age_days": (now - backup.created).days, "complete": backup.complete}
    target = store.uri(backup.prefix)
    if backup.release in kept:
        reason = f"release {backup.release} still has a row in the deployments table"
        return final(Action(EVENT, target, skipped(reason), backup.release, fields))
    action = Action(EVENT, target, Result("planned"), backup.release, fields)
    return single(action, lambda: _delete(store, backup))


def _delete(store: BackupStore, backup: Listed) -> Result:
    try:
        store.delete(backup.keys)
    except StoreError as exc:
        return failed(str(exc))
    return Result("done")
