"""Hostile input, part 1 (issue 11, "Prove it never deletes the wrong thing"): odd rows in
the deployments table and settings at and beyond their limits.

The rows are seeded once into one Houston database next to a live "twin" of each (the
valid name a confused janitor might read the hostile one as, with roles the janitor could
drop: it is a member of them WITH ADMIN OPTION), and the janitor runs as a non-superuser
role, so only its own rules keep the twins alive. One plan and two runs serve every case;
each case asserts what happened to its own row. Kinds the older suites already prove are
not repeated here: SQL-looking names, uppercase, dashes, dots and NULL names
(tests/test_safety.py), a trailing newline, a non-breaking hyphen and a fullwidth digit
(tests/test_odd_rows.py), and most single settings (tests/test_config.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import psycopg
import pytest

from janitor.cli import main
from tests.conftest import Houston, Run, existing_databases, existing_roles, houston_database
from tests.conftest import janitor as run_janitor
from tests.fleet import Fleet, Member, database_of, roles_of, server_now

SECRET = "pw-Hostile-51ab9c"


@dataclass(frozen=True)
class Odd:
    """A hostile release name (made from the test's prefix) and the valid name it imitates."""

    name: Callable[[str], str]
    twin: Callable[[str], str] | None = None
    reason: str = "invalid release name"


ODD_ROWS: dict[str, Odd] = {
    "Cyrillic a (U+0430) in 'data'": Odd(lambda p: f"{p}-d\u0430ta", lambda p: f"{p}-data"),
    "fullwidth 'full' (U+FF46...)": Odd(
        lambda p: f"{p}-\uff46\uff55\uff4c\uff4c", lambda p: f"{p}-full"
    ),
    "zero-width joiner (U+200D) in 'zwj'": Odd(lambda p: f"{p}-zw\u200dj", lambda p: f"{p}-zwj"),
    "zero-width space (U+200B) in 'zws'": Odd(lambda p: f"{p}-zw\u200bs", lambda p: f"{p}-zws"),
    "right-to-left override": Odd(lambda p: f"{p}-\u202erid", lambda p: f"{p}-rid"),
    "combining acute (U+0301) in 'cafe'": Odd(lambda p: f"{p}-cafe\u0301", lambda p: f"{p}-cafe"),
    "Arabic-Indic digit one": Odd(lambda p: f"{p}-v\u0661", lambda p: f"{p}-v1"),
    "newline joining two release names": Odd(
        lambda p: f"{p}-line\n{p}-joined", lambda p: f"{p}-joined"
    ),
    "tab at the end": Odd(lambda p: f"{p}-tab\t", lambda p: f"{p}-tab"),
    "ANSI escape sequence": Odd(lambda p: f"{p}-esc\x1b[2J", lambda p: f"{p}-esc"),
    "DEL control character": Odd(lambda p: f"{p}-del\x7f", lambda p: f"{p}-del"),
    "SOH control character": Odd(lambda p: f"{p}-soh\x01", lambda p: f"{p}-soh"),
    "empty string (not NULL)": Odd(lambda p: "", reason="release name is empty"),
    "spaces only": Odd(lambda p: "   "),
    "LIKE wildcard % alone": Odd(lambda p: "%"),
    "LIKE wildcard % after a prefix": Odd(lambda p: f"{p}-pct%", lambda p: f"{p}-pctx"),
    "LIKE wildcard _ alone": Odd(lambda p: "_"),
    "LIKE wildcard _ after a prefix": Odd(lambda p: f"{p}-und_", lambda p: f"{p}-undx"),
    "glob * after a prefix": Odd(lambda p: f"{p}-star*", lambda p: f"{p}-starx"),
    "'..' alone": Odd(lambda p: ".."),
    "'/../' leading to a live repository": Odd(
        lambda p: f"{p}-dot/../{p}-dotx", lambda p: f"{p}-dotx"
    ),
    "backslash": Odd(lambda p: f"{p}-bs\\x", lambda p: f"{p}-bsx"),
    "dollar-quoted SQL": Odd(lambda p: f"{p}-$$;DROP DATABASE postgres;$$"),
    "10,000 characters": Odd(lambda p: f"{p}-" + "z" * 10_000, reason="63 bytes"),
    # The kinds tests/test_safety.py proves alone, here next to a live twin.
    "uppercase twin of a live name": Odd(lambda p: f"{p}-UP", lambda p: f"{p}-up"),
    "trailing dash twin of a live name": Odd(lambda p: f"{p}-trail-", lambda p: f"{p}-trail"),
    "leading dash twin of a live name": Odd(lambda p: f"-{p}-lead", lambda p: f"{p}-lead"),
    "double quote twin of a live name": Odd(lambda p: f'{p}-q"uote', lambda p: f"{p}-quote"),
    "semicolon twin of a live name": Odd(lambda p: f"{p}-semi;x", lambda p: f"{p}-semix"),
}


def truncation_twin(prefix: str) -> tuple[str, str]:
    """A valid 200-character release name, and the live release whose database (and airflow
    role) is exactly what PostgreSQL would truncate the long one's names to (63 bytes)."""
    live = f"{prefix}-" + "t" * (55 - len(prefix) - 1)
    long = f"{live}-airflow-" + "u" * (200 - len(live) - 9)
    assert database_of(long)[:63] == database_of(live)
    assert len(long) == 200
    return long, live


DUPLICATE_PAIRS = ("dup-expired-1", "dup-expired-2", "dup-expired-3")


@dataclass(frozen=True)
class Swept:
    """The fleet after one plan and two runs, as a non-superuser janitor."""

    houston: Houston
    fleet: Fleet
    plan: Run
    runs: tuple[Run, Run]
    ordinary: str

    def purges(self, run: Run, release: str) -> list[dict[str, object]]:
        return [e for e in run.of("deployment.purge") if e["target"] == release]

    def touched(self, run: Run, names: set[str]) -> list[dict[str, object]]:
        """Events of ``run`` whose target is one of ``names`` (other than the row purge)."""
        return [e for e in run.events if e.get("target") in names and "outcome" in e]


def _special_row(houston: Houston, release: str, deleted_at: str) -> None:
    houston.execute(
        'INSERT INTO "houston$default"."Deployment" (id, "releaseName", "deletedAt")'
        " VALUES (gen_random_uuid()::text, %s, %s::timestamp)",
        (release, deleted_at),
    )


@pytest.fixture(scope="module")
def swept() -> Iterator[Swept]:
    """Every odd row of this module, seeded once; then `plan`, `run`, `run`."""
    with houston_database() as houston:
        janitor_dsn = houston.janitor_role("janitor")
        fleet = Fleet(houston, janitor=houston.release("janitor"))
        now = server_now()
        expired, recent = now - timedelta(days=40), now - timedelta(days=3)
        p = houston.prefix
        long, live = truncation_twin(p)
        members = [
            Member(f"{p}-ordinary", expired),
            Member(long, expired, database=False, roles=()),
            Member(live, None),
            # Duplicate release names: a future-deleted, a recently deleted and a second
            # expired row beside an expired one.
            Member(f"{p}-future", now + timedelta(days=30), database=False),
            Member(f"{p}-dup-future", expired, database=False),
            Member(f"{p}-dup-future", now + timedelta(days=30), database=False),
            Member(f"{p}-dup-recent", expired, database=False),
            Member(f"{p}-dup-recent", recent, database=False),
        ]
        # Rows of one name are settled in turn: a race between them failed role drops.
        for pair in DUPLICATE_PAIRS:
            members.append(Member(f"{p}-{pair}", expired, database=False))
            members.append(Member(f"{p}-{pair}", expired - timedelta(days=1), database=False))
        for odd in ODD_ROWS.values():
            members.append(Member(odd.name(p), expired, database=False, roles=()))
            if odd.twin is not None:
                members.append(Member(odd.twin(p), None, database=False))
        fleet.seed(members)
        _special_row(houston, f"{p}-infinite", "infinity")
        houston.create_role(roles_of(f"{p}-infinite")[0])
        env = {"JANITOR_HOUSTON_DSN": janitor_dsn, "JANITOR_REGISTRY_URL": "none"}
        plan = run_janitor(["plan"], env)
        runs = (run_janitor(["run"], env), run_janitor(["run"], env))
        yield Swept(houston, fleet, plan, runs, f"{p}-ordinary")


def releases(houston: Houston) -> set[str | None]:
    """Every release name with a row (deletedAt is not read: 'infinity' has no datetime)."""
    with psycopg.connect(houston.dsn) as conn:
        query = 'SELECT "releaseName" FROM "houston$default"."Deployment"'
        return {row[0] for row in conn.execute(query)}


def row_ids(houston: Houston, release: str) -> list[str]:
    with psycopg.connect(houston.dsn) as conn:
        query = 'SELECT id FROM "houston$default"."Deployment" WHERE "releaseName" = %s'
        return [row[0] for row in conn.execute(query, (release,))]


def _prefix(swept: Swept) -> str:
    return swept.houston.prefix


def test_the_ordinary_expired_deployment_beside_the_odd_rows_is_swept(swept: Swept) -> None:
    """Among 30 odd rows, the one ordinary expired deployment loses its database, roles and
    row, and every run exits 0 (skipped rows do not change the code)."""
    assert [r.code for r in (swept.plan, *swept.runs)] == [0, 0, 0]
    first = swept.runs[0]
    assert swept.purges(first, swept.ordinary)[0]["outcome"] == "done"
    assert existing_databases({database_of(swept.ordinary)}) == set()
    assert existing_roles(set(roles_of(swept.ordinary))) == set()
    assert swept.ordinary not in releases(swept.houston)


@pytest.mark.parametrize("kind", list(ODD_ROWS))
def test_an_odd_release_name_is_skipped_on_every_run_and_its_live_twin_is_untouched(
    swept: Swept, kind: str
) -> None:
    """A row deleted 40 days ago under a hostile release name is reported skipped (with the
    reason) in the plan and on every run, keeps its row, and the live deployment whose name
    it imitates keeps its roles: no event ever targets them."""
    odd = ODD_ROWS[kind]
    name = odd.name(_prefix(swept))
    (row_id,) = row_ids(swept.houston, name)
    for run in (swept.plan, *swept.runs):
        mine = [e for e in run.events if e.get("id") == row_id]
        assert [(e["event"], e["outcome"]) for e in mine] == [("deployment.purge", "skipped")]
        assert odd.reason in str(mine[0]["reason"])
    assert name in releases(swept.houston)
    if odd.twin is not None:
        twin = odd.twin(_prefix(swept))
        roles = set(roles_of(twin))
        assert existing_roles(roles) == roles
        assert all(swept.touched(run, roles | {twin}) == [] for run in swept.runs)


def test_a_200_character_name_never_costs_the_live_deployment_its_truncated_twin(
    swept: Swept,
) -> None:
    """A valid 200-character release name whose database name PostgreSQL would truncate to
    exactly a live deployment's database name is skipped naming the 63-byte limit; the live
    database and roles stay and are never the target of an event."""
    long, live = truncation_twin(_prefix(swept))
    names = {database_of(live), *roles_of(live)}
    for run in swept.runs:
        (purge,) = swept.purges(run, long)
        assert purge["outcome"] == "skipped"
        assert "63 bytes" in str(purge["reason"])
        assert swept.touched(run, names) == []
    assert existing_databases({database_of(live)}) == {database_of(live)}
    assert existing_roles(set(roles_of(live))) == set(roles_of(live))
    assert long in releases(swept.houston)


@pytest.mark.parametrize(
    "deleted_at",
    ["30 days in the future", "'infinity'"],
)
def test_a_deleted_at_that_is_not_in_the_past_is_never_touched(
    swept: Swept, deleted_at: str
) -> None:
    """A row whose deletedAt lies ahead of the database server's clock (a skewed Houston
    pod, or 'infinity') is not expired: no event names it and its roles stay."""
    release = f"{_prefix(swept)}-" + ("future" if "future" in deleted_at else "infinite")
    for run in (swept.plan, *swept.runs):
        assert [e for e in run.events if release in (e.get("target"), e.get("deployment"))] == []
    assert release in releases(swept.houston)
    role = roles_of(release)[0]
    assert existing_roles({role}) == {role}


@pytest.mark.parametrize("other", ["future", "recent"])
def test_an_expired_row_sharing_its_name_with_a_row_not_yet_expired_keeps_everything(
    swept: Swept, other: str
) -> None:
    """Two rows, one name: the expired one is skipped because the other (deleted in the
    future, or 3 days ago and still restorable) may still own the resources; both rows
    and the roles stay (README "Safety rules")."""
    release = f"{_prefix(swept)}-dup-{other}"
    for run in (swept.plan, *swept.runs):
        (purge,) = swept.purges(run, release)
        assert purge["outcome"] == "skipped"
        assert "live or not yet expired" in str(purge["reason"])
        assert swept.touched(run, set(roles_of(release))) == []
    assert existing_roles(set(roles_of(release))) == set(roles_of(release))
    assert len(row_ids(swept.houston, release)) == 2


@pytest.mark.parametrize("pair", DUPLICATE_PAIRS)
def test_two_expired_rows_of_one_name_are_both_purged_once_the_resources_are_gone(
    swept: Swept, pair: str
) -> None:
    """Two expired rows share a name: the first run drops the roles once, the second row
    finds them absent, both rows go; the next run has nothing left of them."""
    release = f"{_prefix(swept)}-{pair}"
    first, second = swept.runs
    assert [e["outcome"] for e in swept.purges(first, release)] == ["done", "done"]
    drops = [e for e in first.of("role.drop") if e["deployment"] == release]
    assert sorted(e["outcome"] for e in drops) == ["absent", "absent", "done", "done"]
    assert [e["outcome"] for e in first.of("database.drop") if e["deployment"] == release] == [
        "absent",
        "absent",
    ]
    assert swept.purges(second, release) == []
    assert existing_roles(set(roles_of(release))) == set()


# --- settings at and beyond their limits --------------------------------------------------

DAYS_SETTINGS = (
    "JANITOR_RETENTION_DAYS",
    "JANITOR_LOG_RETENTION_DAYS",
    "JANITOR_METRICS_RETENTION_DAYS",
    "JANITOR_BACKUP_RETENTION_DAYS",
    "JANITOR_ORPHAN_GRACE_DAYS",
)
BAD_DAYS = {
    "0": "must be a whole number >= 1",
    "-1": "must be a whole number >= 1",
    "1.5": "must be a whole number",
    "1e3": "must be a whole number",
    "36501": "must be at most 36500",
}
# (setting, value, what the one stderr line must say after "<setting>=<shown value>").
BAD_SETTINGS: dict[str, tuple[str, str, str]] = {
    "lock timeout 0": ("JANITOR_LOCK_TIMEOUT_SECONDS", "0", "must be a whole number >= 1"),
    "lock timeout past an hour": ("JANITOR_LOCK_TIMEOUT_SECONDS", "3601", "at most 3600"),
    "deadline negative": ("JANITOR_DEADLINE_SECONDS", "-1", "must be a whole number >= 0"),
    "deadline past a week": ("JANITOR_DEADLINE_SECONDS", "604801", "at most 604800"),
    "concurrency 65": ("JANITOR_CONCURRENCY", "65", "must be at most 64"),
    "max deletions in exponent form": ("JANITOR_MAX_DELETIONS", "1e9", "whole number"),
    "max deletions with digit separators": ("JANITOR_MAX_DELETIONS", "1_000", "whole number"),
    "lease shorter than 15 s": ("JANITOR_LEASE_DURATION_SECONDS", "14", ">= 15"),
    "template with attribute access": (
        "JANITOR_DATABASE_TEMPLATE",
        "{release.__class__}",
        "may only use {release} and {release_snake}",
    ),
    "template with an index": ("JANITOR_DATABASE_TEMPLATE", "{release[0]}", "may only use"),
    "template with a positional field": ("JANITOR_ROLE_TEMPLATES", "{0}_airflow", "found {0}"),
    "template with an unclosed field": ("JANITOR_DATABASE_TEMPLATE", "{release", "not a valid"),
    "template naming postgres": ("JANITOR_ROLE_TEMPLATES", "{release}_a,postgres", "must contain"),
    "template past 63 bytes": (
        "JANITOR_DATABASE_TEMPLATE",
        "{release}_" + "x" * 50,
        "PostgreSQL would truncate it",
    ),
    "repository template climbing out with ..": (
        "JANITOR_REGISTRY_REPOSITORY_TEMPLATE",
        "{release}/../other",
        "not a valid repository name",
    ),
    "repository template with %2F": (
        "JANITOR_REGISTRY_REPOSITORY_TEMPLATE",
        "{release}%2Fairflow",
        "not a valid repository name",
    ),
    "index pattern with a path": ("JANITOR_LOG_INDEX_PATTERNS", "fluentd.*/..", "holds '/'"),
    "index pattern with a query": ("JANITOR_LOG_INDEX_PATTERNS", "fluentd.?pretty", "holds '?'"),
    "index pattern '..'": ("JANITOR_LOG_INDEX_PATTERNS", "..,fluentd.*", "names no index"),
    "DSN port that is no number": (
        "JANITOR_HOUSTON_DSN",
        f"host=127.0.0.1 port=abc password={SECRET}",
        "port 'abc' is not a port number",
    ),
    "DSN port out of range": (
        "JANITOR_AIRFLOW_DSN",
        f"postgresql://janitor:{SECRET}@db:65536/postgres",
        "port '65536' is not a port number",
    ),
    "DSN sslmode that libpq does not know": (
        "JANITOR_HOUSTON_DSN",
        f"host=db sslmode=bogus password={SECRET}",
        "sslmode 'bogus' is not one of",
    ),
    "DSN connect_timeout that is no number": (
        "JANITOR_HOUSTON_DSN",
        f"host=db connect_timeout=soon password={SECRET}",
        "connect_timeout 'soon' is not a whole number",
    ),
    "DSN with an unterminated quote": (
        "JANITOR_HOUSTON_DSN",
        f"host=db password='{SECRET}",
        "unterminated quoted string",
    ),
    "DSN of another database product": (
        "JANITOR_HOUSTON_DSN",
        f"mysql://janitor:{SECRET}@db/houston",
        "is not a valid PostgreSQL DSN",
    ),
    "URL with ftp scheme and credentials": (
        "JANITOR_ELASTICSEARCH_URL",
        f"ftp://janitor:{SECRET}@es:9200",
        "must be an http:// or https:// URL",
    ),
    "URL with file scheme": ("JANITOR_PROMETHEUS_URL", "file:///etc/passwd", "http:// or https"),
    "URL with javascript scheme": ("JANITOR_REGISTRY_URL", "javascript:alert(1)", "http://"),
    "URL with credentials and an invalid port": (
        "JANITOR_PUSHGATEWAY_URL",
        f"http://janitor:{SECRET}@gateway:99999",
        "has an invalid port",
    ),
    "URL with a query": (
        "JANITOR_REGISTRY_URL",
        f"https://janitor:{SECRET}@registry?x=/v2/other",
        "must not have a query or fragment",
    ),
    "URL with a fragment": ("JANITOR_ELASTICSEARCH_URL", "http://es:9200/#", "query or fragment"),
    "URL without a host": ("JANITOR_PROMETHEUS_URL", "https://", "with a host"),
}


@pytest.fixture(scope="module")
def untouched() -> Iterator[tuple[Houston, dict[str, str], str]]:
    """An expired deployment (roles only) that any run would sweep, and its environment."""
    with houston_database() as houston:
        release = houston.deployment("expired", deleted_days_ago=40, database=False)
        yield houston, {"JANITOR_HOUSTON_DSN": houston.dsn, "JANITOR_REGISTRY_URL": "none"}, release


def _refused(
    untouched: tuple[Houston, dict[str, str], str],
    setting: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Runs with ``setting=value``: exit 2, no stdout, one stderr line; nothing changed."""
    houston, env, release = untouched
    code = main(["run"], environ=env | {setting: value})
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(f"janitor: invalid configuration: {setting}=")
    assert SECRET not in err
    assert release in releases(houston)
    assert existing_roles(set(roles_of(release))) == set(roles_of(release))
    return err


@pytest.mark.parametrize("value", list(BAD_DAYS))
@pytest.mark.parametrize("setting", DAYS_SETTINGS)
def test_every_days_setting_out_of_its_range_is_refused_before_anything_changes(
    untouched: tuple[Houston, dict[str, str], str],
    setting: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each *_DAYS setting at 0, negative, fractional, in exponent form or past a century:
    exit 2, one stderr line naming the setting, the value and the rule; the expired
    deployment is still there."""
    err = _refused(untouched, setting, value, capsys)
    assert f"{setting}={value!r} (environment): {BAD_DAYS[value]}" in err


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_a_setting_beyond_its_limits_is_refused_naming_it_with_secrets_masked(
    untouched: tuple[Houston, dict[str, str], str],
    case: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A limit, template, pattern, DSN or URL an operator could mistype: exit 2, one plain
    stderr line naming the setting and its value with any password masked; nothing changed."""
    setting, value, problem = BAD_SETTINGS[case]
    err = _refused(untouched, setting, value, capsys)
    assert problem in err


@pytest.mark.parametrize("setting", [*DAYS_SETTINGS, "JANITOR_LOCK_TIMEOUT_SECONDS"])
def test_every_lower_bound_itself_is_accepted(
    untouched: tuple[Houston, dict[str, str], str], setting: str
) -> None:
    """1 is a valid window and lock timeout: a dry run with it plans the expired
    deployment and changes nothing."""
    houston, env, release = untouched
    plan = run_janitor(["plan"], env | {setting: "1", "JANITOR_DEADLINE_SECONDS": "0"})
    assert plan.code == 0
    assert plan.outcomes("deployment.purge") == {release: "planned"}
    assert release in releases(houston)
