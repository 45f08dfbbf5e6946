"""`janitor check`: a preflight that changes nothing and says what is missing."""

from __future__ import annotations

from psycopg import sql

from tests.conftest import Houston, admin, dsn, janitor


def test_check_passes_for_a_superuser_on_a_well_formed_houston(
    houston: Houston, env: dict[str, str]
) -> None:
    """Everything reachable and permitted: exit 0, one ok line per component."""
    run = janitor(["check"], env)

    assert run.code == 0
    assert run.outcomes("check.component") == {"houston": "ok", "airflow-databases": "ok"}


def test_check_lists_what_a_limited_account_lacks(houston: Houston, env: dict[str, str]) -> None:
    """A role that can only read: exit 1, naming the missing table privileges, CREATEROLE and
    pg_signal_backend."""
    role = f"{houston.prefix}_reader"
    houston.create_role(role)
    with admin() as conn:
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(houston.dbname), sql.Identifier(role)
            )
        )
    houston.execute(
        sql.SQL('GRANT USAGE ON SCHEMA "houston$default" TO {}')
        .format(sql.Identifier(role))
        .as_string(None)
    )
    houston.execute(
        sql.SQL('GRANT SELECT ON "houston$default"."Deployment" TO {}')
        .format(sql.Identifier(role))
        .as_string(None)
    )
    env["JANITOR_HOUSTON_DSN"] = dsn(houston.dbname, user=role)

    run = janitor(["check"], env)

    assert run.code == 1
    problems = {e["target"]: e.get("problems", []) for e in run.of("check.component")}
    assert any(
        "lacks UPDATE, DELETE" in p and "GRANT UPDATE, DELETE" in p for p in problems["houston"]
    )
    assert any("CREATEROLE" in p for p in problems["airflow-databases"])
    assert any("pg_signal_backend" in p for p in problems["airflow-databases"])


def test_check_names_a_missing_table(houston: Houston, env: dict[str, str]) -> None:
    """A wrong JANITOR_HOUSTON_TABLE is reported, not a stack trace."""
    env["JANITOR_HOUSTON_TABLE"] = "Deployments"

    run = janitor(["check"], env)

    assert run.code == 1
    assert "not found" in run.of("check.component")[0]["problems"][0]


def test_check_reports_an_unreachable_server(env: dict[str, str]) -> None:
    """A Houston DSN pointing nowhere: exit 1 with the connection error."""
    env["JANITOR_HOUSTON_DSN"] = "host=127.0.0.1 port=1 user=postgres dbname=houston"

    run = janitor(["check"], env)

    assert run.code == 1
    assert run.of("check.component")[0]["outcome"] == "failed"
