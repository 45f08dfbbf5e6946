"""`make demo`: the janitor's main job against a local sandbox.

Starts the local services, seeds a small fleet (live, recently deleted, expired,
half-cleaned) and an orphan (a database, roles and images whose row is gone), then shows a
dry run, a real run (each dropped database backed up first), a second run with nothing to
do, each in the console view (README "Console view"), the run metrics the real runs pushed
to a Pushgateway, the restore of a dropped database from its final backup, and an audit
finding the orphan. Everything it creates is named after the demo's releases; rerunning
starts afresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.es_standin import ElasticsearchStandin, running_standin  # noqa: E402
from tests.prometheus_server import running_prometheus  # noqa: E402 - after sys.path setup
from tests.pushgateway_server import Pushgateway, running_pushgateway  # noqa: E402
from tests.registry_server import Registry, run_registry  # noqa: E402

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
HOUSTON_DB = "janitor_demo_houston"
HOUSTON = ADMIN.replace("dbname=postgres", f"dbname={HOUSTON_DB}")
# release name -> days since soft delete (None: live); "half" = a crash left it half-cleaned
FLEET: dict[str, float | None] = {
    "cosmic-nebula-1234": None,
    "solar-flare-5678": 3,
    "dark-matter-4321": 20,
    "quantum-orbit-8765": 40,
    "lunar-eclipse-2468": 30,
}
HALF_CLEANED = "lunar-eclipse-2468"
RESTORED = "dark-matter-4321"
RESTORED_AS = "dark_matter_4321_restored"
# Its row is gone (a hard delete that died halfway): only `janitor audit` finds what is left.
ORPHAN = "ghost-comet-1357"
LOG_DAYS = (1, 7, 14, 16, 20, 30)


def banner(text: str) -> None:
    print(f"\n\033[1m=== {text} ===\033[0m" if sys.stdout.isatty() else f"\n=== {text} ===")
    sys.stdout.flush()


def names(release: str) -> tuple[str, list[str]]:
    snake = release.replace("-", "_")
    return f"{snake}_airflow", [f"{snake}_airflow", f"{snake}_celery"]


def reset_and_seed() -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        # Databases first: the deployment roles own them (the restored one included).
        releases = [*FLEET, ORPHAN]
        databases = [names(release)[0] for release in releases] + [HOUSTON_DB, RESTORED_AS]
        for database in databases:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        for release in releases:
            for role in names(release)[1]:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(HOUSTON_DB)))
        for release in releases:
            database, roles = names(release)
            for role in roles:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            if release != HALF_CLEANED:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(roles[0])
                    )
                )
    with psycopg.connect(HOUSTON, autocommit=True) as conn:
        conn.execute(
            """CREATE SCHEMA "houston$default";
               CREATE TABLE "houston$default"."Deployment" (
                 id text PRIMARY KEY, "releaseName" text NOT NULL UNIQUE, label text,
                 "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 "deletedAt" timestamp(3))"""
        )
        for number, (release, days) in enumerate(FLEET.items()):
            conn.execute(
                """INSERT INTO "houston$default"."Deployment"
                     (id, "releaseName", label, "deletedAt")
                   VALUES (%s, %s, %s, CASE WHEN %s::int IS NULL THEN NULL
                     ELSE (now() AT TIME ZONE 'UTC') - make_interval(days => %s::int) END)""",
                (f"demo-{number}", release, release.split("-")[0], days, days),
            )
    seed_dag_runs()
    print(f'Houston database {HOUSTON_DB}, deployments table "houston$default"."Deployment":')
    for release, days in FLEET.items():
        state = "live" if days is None else f"deleted {days:g} days ago"
        extra = " (a crash left it half-cleaned: database gone, roles left)"
        print(f"  {release:<22} {state}{extra if release == HALF_CLEANED else ''}")
    print(f"  ({ORPHAN}: no row, but its database, roles and images are still there)")


def seed_dag_runs() -> None:
    """Airflow's dag_run table, with rows, in the database the demo restores."""
    database, roles = names(RESTORED)
    with psycopg.connect(ADMIN.replace("dbname=postgres", f"dbname={database}")) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(roles[0])))
        conn.execute("CREATE TABLE dag_run (id serial PRIMARY KEY, dag_id text, state text)")
        conn.execute(
            "INSERT INTO dag_run (dag_id, state) SELECT 'etl_' || i, 'success'"
            " FROM generate_series(1, 1000) i"
        )


def show_restored() -> None:
    with psycopg.connect(ADMIN.replace("dbname=postgres", f"dbname={RESTORED_AS}")) as conn:
        count, owner = conn.execute(
            "SELECT count(*), pg_get_userbyid(relowner) FROM dag_run, pg_class"
            " WHERE relname = 'dag_run' GROUP BY relowner"
        ).fetchone() or (0, None)
    print(f"{RESTORED_AS}: dag_run holds {count} rows, owned by {owner}")


def seed_logs(es: ElasticsearchStandin) -> None:
    now = datetime.now(UTC)
    for days in LOG_DAYS:
        created = now - timedelta(days=days)
        es.add_index(f"fluentd.cosmic-nebula-1234.{created:%Y.%m.%d}", created)
    es.add_index(".kibana_1", now - timedelta(days=90), hidden=True)
    print(f"Elasticsearch: daily log indices {', '.join(f'{d}d' for d in LOG_DAYS)} old,")
    print("  and a hidden .kibana_1 index 90 days old (never touched)")


def seed_images(registry: Registry) -> None:
    pusher = registry.pusher()
    for release in [*FLEET, ORPHAN]:
        repository = f"{release}/airflow"
        image = pusher.image(repository, "deploy-1", label=release)
        pusher.put_manifest(repository, "latest", image)  # two tags, one digest
        if release != HALF_CLEANED:
            pusher.index(repository, "deploy-2", oci=True, label=release)  # multi-arch
    print("Registry: each deployment's <release>/airflow holds deploy-1 and latest (one digest);")
    print("  all but the half-cleaned one also hold deploy-2, a multi-arch OCI index")


def show_tags(registry: Registry) -> None:
    pusher = registry.pusher()
    held = {r: sorted(pusher.tags(f"{r}/airflow") or []) for r in FLEET}
    print("tags left: " + "; ".join(f"{r}: {', '.join(t)}" for r, t in held.items() if t))


def janitor(*args: str, env: dict[str, str]) -> int:
    command = [str(ROOT / ".venv" / "bin" / "janitor"), *args, "--log-format", "console"]
    print("$ janitor " + " ".join(args), flush=True)
    return subprocess.run(command, env=os.environ | env, check=False).returncode


def show_state() -> None:
    with psycopg.connect(HOUSTON) as conn:
        query = 'SELECT "releaseName" FROM "houston$default"."Deployment"'
        rows = [r[0] for r in conn.execute(query)]
    with psycopg.connect(ADMIN) as conn:
        wanted = [names(r)[0] for r in FLEET]
        dbs = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s) ORDER BY 1", (wanted,)
            )
        ]
    print(f"rows left: {', '.join(sorted(rows))}")
    print(f"deployment databases left: {', '.join(dbs)}")


def show_metrics(gateway: Pushgateway) -> None:
    """The run metrics the last real run pushed, as Prometheus would scrape them."""
    exposition = requests.get(f"http://{gateway.address}/metrics", timeout=10).text
    pushed = [line for line in exposition.splitlines() if line.startswith("janitor_")]
    print("run metrics on the Pushgateway:")
    for line in pushed:
        # Counts of events the run did not report are pushed as 0; they say nothing here.
        if not line.startswith("janitor_last_run_actions") or not line.endswith(" 0"):
            print(f"  {line}")


def start_services(stack: ExitStack) -> tuple[dict[str, str], Registry, Pushgateway]:
    """Real PostgreSQL, Prometheus, Pushgateway and registry; the ES 8 stand-in; the
    janitor's env."""
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-services.sh")], check=True)
    sandbox = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="janitor-demo-")))
    prometheus = stack.enter_context(
        running_prometheus(sandbox / "prometheus", "--storage.tsdb.retention.time=15d")
    )
    print(f"Prometheus (retention 15d) on {prometheus}")
    registry = stack.enter_context(run_registry(sandbox / "registry"))
    print(f"Docker registry (distribution, deletion enabled) on {registry.url}")
    # No Elasticsearch server package exists for Debian; the tests' ES 8 stand-in plays it.
    elasticsearch = stack.enter_context(running_standin())
    print(f"Elasticsearch stand-in (ES 8 API) on {elasticsearch.url}")
    gateway = stack.enter_context(running_pushgateway(sandbox / "pushgateway"))
    print(f"Prometheus Pushgateway on {gateway.url}")
    seed_logs(elasticsearch)
    backups = sandbox / "backups"
    print(f'Final backups (README "Final backups and restore") in {backups}')
    env = {
        "JANITOR_HOUSTON_DSN": HOUSTON,
        "JANITOR_REGISTRY_URL": registry.url,
        "JANITOR_ELASTICSEARCH_URL": elasticsearch.url,
        "JANITOR_PROMETHEUS_URL": prometheus,
        "JANITOR_PUSHGATEWAY_URL": gateway.url,
        "JANITOR_BACKUP_URL": f"file://{backups}",
    }
    return env, registry, gateway


def demo() -> int:
    with ExitStack() as stack:
        banner("Starting the local services")
        env, registry, gateway = start_services(stack)
        banner("Seeding a small fleet")
        reset_and_seed()
        seed_images(registry)
        banner("1. Dry run: what would go (nothing changes)")
        codes = [janitor("plan", env=env)]
        banner("2. Real run")
        codes.append(janitor("run", env=env))
        show_state()
        show_tags(registry)
        show_metrics(gateway)
        banner("3. Second run: nothing left to do")
        codes.append(janitor("run", env=env))
        show_state()
        show_tags(registry)
        banner(f"4. Undo: {RESTORED}'s database back from its final backup")
        codes.append(janitor("backups", env=env))
        codes.append(janitor("restore", RESTORED, "--as", RESTORED_AS, env=env))
        show_restored()
        banner(
            f"5. Audit: what no deployment row accounts for ({ORPHAN}, and the roles of "
            f"{RESTORED} the restore recreated)"
        )
        codes.append(janitor("audit", env=env))
    banner(f"Exit codes: {codes} (0 = everything done)")
    return 0 if codes == [0] * len(codes) else 1


if __name__ == "__main__":
    sys.exit(demo())
