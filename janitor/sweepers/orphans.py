"""Orphans (README "Orphans: janitor audit"): databases, roles and registry repositories whose
names a template gives for a release name that no row of the deployments table holds.

Every store is read set-based, whatever its size: one catalog query for the databases and
one for the roles of the Airflow database server, the registry's catalog (paginated), and
the release names of every row (live, soft-deleted, expired) in one query; the names are
matched in Python. A name is read back into a release name by inverting the templates
(naming.release_from). It is an orphan only when exactly one release name can give it and
no row holds that release; a name that two templates read as two releases, or that a row
accounts for under one template while another template reads it as a release without a row,
is *ambiguous*: reported with the reason, never an orphan to delete. Protected databases and
roles (README "Safety rules") are left out before any matching, so they are never reported.

Only what is cheap is measured: a database's size (``pg_database_size``, for the orphans
only), a repository's tag count (one tag listing per repository the template names and no
row accounts for; a repository that lists no tags holds nothing and is no orphan).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import Any, Literal

import psycopg

from janitor.clients.registry import RegistryClient, RegistryError
from janitor.naming import Templates, release_from, render
from janitor.plan import Action, Result, Step, failed, final, skipped
from janitor.postgres import describe
from janitor.sweepers.databases import (
    ALWAYS_PROTECTED_DATABASES,
    ALWAYS_PROTECTED_ROLES,
    Connect,
    Protected,
)

Kind = Literal["database", "role", "repository"]
FOUND = Result("found")


def event(kind: Kind) -> str:
    return f"orphan.{kind}"


@dataclass(frozen=True)
class Finding:
    """A name of ``kind`` that no row accounts for: an orphan of ``release``, or, when
    ``ambiguity`` names why, a name that may well be someone else's."""

    kind: Kind
    name: str
    release: str | None
    ambiguity: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    """What was cheap to measure: ``size_bytes`` of a database, ``tags`` of a repository."""

    @property
    def orphan(self) -> bool:
        return self.ambiguity is None


def classify(
    kind: Kind, names: Iterable[str], templates: Sequence[str], rows: Collection[str]
) -> list[Finding]:
    """The names of ``kind`` that no row of ``rows`` (release names) accounts for under
    ``templates``, as orphans or ambiguous; names no template gives are not reported.

    A row accounts for the names its release renders to, also a release name the janitor
    would refuse today (an old row ``old_name`` renders to ``old_name_airflow``, which reads
    as release ``old-name`` too: ambiguous).
    """
    owners: dict[str, list[tuple[str, str]]] = {}
    for template in dict.fromkeys(templates):
        for row in rows:
            owners.setdefault(render(template, row), []).append((template, row))
    findings = []
    for name in sorted(names):
        readings = [
            (template, release)
            for template in dict.fromkeys(templates)
            if (release := release_from(template, name)) is not None
        ]
        rowless = [(t, r) for t, r in readings if r not in rows]
        owned = owners.get(name, [])
        if not rowless:
            continue  # no template reads it, or every reading is a row's
        if owned:
            (template, row), (other, release) = owned[0], rowless[0]
            reason = (
                f"ambiguous: {name} is what {template} gives for deployment {row!r}, and "
                f"what {other} gives for release {release!r}, which has no row"
            )
            findings.append(Finding(kind, name, None, reason))
        elif len({r for _, r in rowless}) > 1:
            readings_text = " or ".join(f"by {t} for release {r!r}" for t, r in rowless)
            reason = f"ambiguous: {name} is given {readings_text}; none has a row"
            findings.append(Finding(kind, name, None, reason))
        else:
            findings.append(Finding(kind, name, rowless[0][1]))
    return findings


@dataclass(frozen=True)
class Audit:
    """What an audit found, and which stores it could read in full."""

    findings: tuple[Finding, ...] = ()
    failures: tuple[Step, ...] = ()
    """One failed event per store that could not be read."""
    read: frozenset[Kind] = frozenset()

    def orphans(self) -> list[Finding]:
        return [f for f in self.findings if f.orphan]

    @cached_property
    def ambiguous(self) -> Mapping[tuple[Kind, str], str]:
        return {(f.kind, f.name): f.ambiguity for f in self.findings if f.ambiguity is not None}

    def blocked(self, release: str, templates: Templates) -> str | None:
        """Why ``release`` may not be swept as an orphan: one of the names its templates
        give is ambiguous (it may be someone else's)."""
        names: list[tuple[Kind, str]] = [("database", templates.database_name(release))]
        names += [("role", role) for role in templates.role_names(release)]
        if templates.repository is not None:
            names.append(("repository", templates.repository_name(release)))
        return next((self.ambiguous[n] for n in names if n in self.ambiguous), None)

    def steps(
        self, notes: Mapping[tuple[Kind, str], Mapping[str, Any]] | None = None
    ) -> list[Step]:
        """One event per finding (``found``, or ``skipped`` with the ambiguity), with what
        ``notes`` adds to it, then the failures."""
        found = []
        for f in self.findings:
            result = FOUND if f.orphan else skipped(f.ambiguity or "")
            extra = (notes or {}).get((f.kind, f.name), {})
            action = Action(event(f.kind), f.name, result, f.release, {**f.fields, **extra})
            found.append(final(action))
        return found + list(self.failures)


@dataclass(frozen=True)
class Stores:
    """How to read each store; None for a store this audit leaves alone."""

    airflow: Connect | None
    airflow_name: str
    """The Airflow database server as events name it (no credentials)."""
    protected: Protected
    registry: Callable[[], RegistryClient] | None
    registry_name: str
    concurrency: int = 8


def audit(stores: Stores, templates: Templates, rows: Collection[str]) -> Audit:
    """Every store's names that no row of ``rows`` accounts for. A store that cannot be
    read is one failed event; the others are still read."""
    parts = []
    if stores.airflow is not None:
        parts.append(_audit_server(stores.airflow, stores, templates, rows))
    if stores.registry is not None and templates.repository is not None:
        parts.append(_audit_registry(stores.registry(), stores, templates.repository, rows))
    return Audit(
        findings=tuple(f for part in parts for f in part.findings),
        failures=tuple(s for part in parts for s in part.failures),
        read=frozenset(k for part in parts for k in part.read),
    )


_DATABASES = "SELECT datname, datistemplate FROM pg_database"
_ROLES = "SELECT rolname, rolsuper FROM pg_roles"
# Only where the account may read the size (PostgreSQL: CONNECT on the database, or
# pg_read_all_stats); has_database_privilege by oid is NULL for a database dropped meanwhile.
_SIZES = """
SELECT datname, CASE WHEN has_database_privilege(oid, 'CONNECT')
                       OR pg_has_role('pg_read_all_stats', 'MEMBER')
                     THEN pg_database_size(oid) END
  FROM pg_database WHERE datname = ANY(%(names)s)
"""


def _audit_server(
    connect: Connect, stores: Stores, templates: Templates, rows: Collection[str]
) -> Audit:
    try:
        with connect() as conn:
            ((user, current),) = conn.execute("SELECT current_user, current_database()")
            protected_databases = ALWAYS_PROTECTED_DATABASES | stores.protected.databases
            databases = [
                name
                for name, is_template in conn.execute(_DATABASES)
                if not is_template and name not in protected_databases and name != current
            ]
            protected_roles = ALWAYS_PROTECTED_ROLES | stores.protected.roles | {user}
            roles = [
                name
                for name, superuser in conn.execute(_ROLES)
                if not superuser and name not in protected_roles and not name.startswith("pg_")
            ]
            found = classify("database", databases, (templates.database,), rows)
            orphans = [f.name for f in found if f.orphan]
            sizes = dict(conn.execute(_SIZES, {"names": orphans}).fetchall())
    except psycopg.Error as exc:
        error = f"cannot read the databases and roles of {stores.airflow_name}: {describe(exc)}"
        failure = Action(event("database"), stores.airflow_name, failed(error))
        return Audit(failures=(final(failure),))
    found = [replace(f, fields={"size_bytes": sizes.get(f.name)}) if f.orphan else f for f in found]
    found += classify("role", roles, templates.roles, rows)
    return Audit(findings=tuple(found), read=frozenset({"database", "role"}))


def _audit_registry(
    client: RegistryClient, stores: Stores, template: str, rows: Collection[str]
) -> Audit:
    try:
        try:
            repositories = client.list_repositories()
        except RegistryError as exc:
            failure = Action(event("repository"), stores.registry_name, failed(str(exc)))
            return Audit(failures=(final(failure),))
        candidates = classify("repository", repositories, (template,), rows)
        with ThreadPoolExecutor(stores.concurrency, "audit") as pool:
            listings = list(pool.map(partial(_tags, client), (f.name for f in candidates)))
    finally:
        client.close()
    found: list[Finding] = []
    failures: list[Step] = []
    for finding, listing in zip(candidates, listings, strict=True):
        if isinstance(listing, RegistryError):
            action = Action(event("repository"), finding.name, failed(str(listing)))
            failures.append(final(action))
        elif listing:
            # A repository listing no tags holds nothing (distribution keeps emptied
            # repositories in its catalog and cannot delete them): no orphan.
            found.append(replace(finding, fields={"tags": len(listing)}))
    read: frozenset[Kind] = frozenset() if failures else frozenset({"repository"})
    return Audit(tuple(found), tuple(failures), read)


def _tags(client: RegistryClient, repository: str) -> list[str] | RegistryError:
    try:
        return client.list_tags(repository) or []
    except RegistryError as exc:
        return exc
