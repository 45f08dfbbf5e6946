"""Configuration: precedence, validation, and what an operator sees for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from janitor.cli import main
from janitor.config import load_settings
from tests.conftest import Houston, janitor

SECRET = "p4ss-w0rd"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"JANITOR_RETENTION_DAYS": "0"},
            "JANITOR_RETENTION_DAYS='0' (environment): must be a whole number >= 1",
        ),
        ({"JANITOR_RETENTION_DAYS": "-3"}, "JANITOR_RETENTION_DAYS='-3'"),
        (
            {"JANITOR_LOG_RETENTION_DAYS": "abc"},
            "JANITOR_LOG_RETENTION_DAYS='abc' (environment): must be a whole number",
        ),
        ({"JANITOR_METRICS_RETENTION_DAYS": "1.5"}, "JANITOR_METRICS_RETENTION_DAYS='1.5'"),
        ({"JANITOR_ONLY": "databases,backups"}, "'backups' is not one of"),
        (
            {"JANITOR_DATABASE_TEMPLATE": "airflow"},
            "JANITOR_DATABASE_TEMPLATE='airflow' (environment): must contain {release}",
        ),
        ({"JANITOR_ROLE_TEMPLATES": "{release}_a,{deployment}_b"}, "found {deployment}"),
        (
            {"JANITOR_REGISTRY_REPOSITORY_TEMPLATE": "{release!r}"},
            "JANITOR_REGISTRY_REPOSITORY_TEMPLATE",
        ),
        (
            {"JANITOR_HOUSTON_DSN": f"host=x password={SECRET} port"},
            "JANITOR_HOUSTON_DSN='host=x password=*** port' (environment): is not a valid",
        ),
        ({"JANITOR_REGISTRY_URL": "registry.example.com"}, "must be an http:// or https:// URL"),
        ({"JANITOR_MAX_DELETIONS": "-1"}, "JANITOR_MAX_DELETIONS='-1'"),
        ({"JANITOR_CONCURRENCY": "0"}, "JANITOR_CONCURRENCY='0'"),
        ({"JANITOR_DRY_RUN": "perhaps"}, "must be true or false"),
        ({"JANITOR_LOG_AGE_SOURCE": "mtime"}, "'mtime' is not one of"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "*"}, "would address more than log indices"),
        ({"JANITOR_LOG_TIMESTRING": "%Y.%q"}, "unsupported directive %q"),
        (
            {"JANITOR_PROMETHEUS_CA_BUNDLE": "/nonexistent/ca.pem"},
            "JANITOR_PROMETHEUS_CA_BUNDLE='/nonexistent/ca.pem' (environment): no such file",
        ),
        ({"JANITOR_REGISTRY_CA_BUNDLE": "/nonexistent/ca.pem"}, "no such file"),
        ({"JANITOR_ELASTICSEARCH_CA_BUNDLE": "/nonexistent/ca.pem"}, "no such file"),
    ],
)
def test_invalid_settings_exit_2_with_one_line_naming_setting_and_value(
    environ: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad input: exit 2, one stderr line naming setting and value, secrets masked, no events."""
    base = {"JANITOR_HOUSTON_DSN": "host=127.0.0.1 dbname=houston"}

    code = main(["run"], environ=base | environ)

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("janitor: invalid configuration: ")
    assert expected in err
    assert SECRET not in err


def test_nothing_configured_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A janitor with no endpoint at all says what to configure and exits 2."""
    assert main(["run"], environ={}) == 2
    assert "JANITOR_HOUSTON_DSN" in capsys.readouterr().err


def test_only_a_subsystem_without_its_endpoint_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--only logs without an Elasticsearch URL cannot do what was asked: exit 2."""
    assert main(["run", "--only", "logs"], environ={"JANITOR_HOUSTON_DSN": "host=x"}) == 2
    assert "--only logs needs JANITOR_ELASTICSEARCH_URL" in capsys.readouterr().err


def test_flags_beat_environment_beats_file_beats_defaults(tmp_path: Path) -> None:
    """Precedence: command line > JANITOR_* environment > YAML file > default."""
    config = tmp_path / "janitor.yaml"
    config.write_text(
        "retention_days: 20\nconcurrency: 3\nmax_deletions: 7\nlog_retention_days: 9\n"
    )
    environ = {"JANITOR_CONCURRENCY": "5", "JANITOR_MAX_DELETIONS": "11"}

    settings = load_settings({"max_deletions": "13"}, environ, config)

    assert settings.retention_days == 20
    assert settings.concurrency == 5
    assert settings.max_deletions == 13
    assert settings.log_retention_days == 9
    assert settings.metrics_retention_days == 15


def test_config_file_accepts_env_style_keys_and_rejects_unknown_ones(tmp_path: Path) -> None:
    """JANITOR_-prefixed keys are accepted in the file; a typo is an error naming the key."""
    config = tmp_path / "janitor.yaml"
    config.write_text("JANITOR_RETENTION_DAYS: 30\n")
    assert load_settings({}, {}, config).retention_days == 30

    config.write_text("retention_dayz: 30\n")
    with pytest.raises(Exception, match="unknown setting 'retention_dayz'"):
        load_settings({}, {}, config)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the file"),
        ("a: [", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_unreadable_or_malformed_config_file_exits_2(
    tmp_path: Path, content: str | None, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config pointing at a missing or broken file is a configuration error, exit 2."""
    config = tmp_path / "janitor.yaml"
    if content is not None:
        config.write_text(content)

    code = main(["run", "--config", str(config)], environ={"JANITOR_HOUSTON_DSN": "host=x"})

    assert code == 2
    assert expected in capsys.readouterr().err


def test_empty_values_mean_unset() -> None:
    """Helm renders unset values as empty strings: they must not count as configured."""
    settings = load_settings({}, {"JANITOR_HOUSTON_DSN": "host=x", "JANITOR_REGISTRY_URL": ""})
    assert settings.registry_url is None
    assert settings.subsystems == ("databases",)


def test_airflow_dsn_defaults_to_houston_server_database_postgres() -> None:
    """Without JANITOR_AIRFLOW_DSN the janitor administers the Houston server's postgres db."""
    settings = load_settings({}, {"JANITOR_HOUSTON_DSN": "postgresql://j:pw@db:6432/houston"})
    assert "dbname=postgres" in (settings.airflow_conninfo() or "")
    assert "port=6432" in (settings.airflow_conninfo() or "")


def test_run_started_summarises_config_without_secrets(houston: Houston) -> None:
    """run.started lists the non-secret configuration; passwords and tokens are masked."""
    env = {
        "JANITOR_HOUSTON_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1/{houston.dbname}",
        "JANITOR_REGISTRY_URL": "none",
        "JANITOR_REGISTRY_PASSWORD": SECRET,
        "JANITOR_ELASTICSEARCH_API_KEY": SECRET + "-key",
    }

    run = janitor(["plan"], env)

    started = run.of("run.started")[0]
    assert SECRET not in str(run.events)
    assert started["config"]["registry_password"] == "***"
    assert started["config"]["houston_dsn"].endswith(f":***@127.0.0.1/{houston.dbname}")
    assert started["config"]["retention_days"] == 15
    assert started["subsystems"] == ["databases"]


def test_version_and_module_entry_point() -> None:
    """`python -m janitor --version` works like the console script."""
    result = subprocess.run(
        [sys.executable, "-m", "janitor", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("janitor ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command or flag is a usage error (exit 2) from the argument parser."""
    with pytest.raises(SystemExit) as exit_info:
        main(["explode"], environ={})
    assert exit_info.value.code == 2
