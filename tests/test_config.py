"""Configuration: precedence, validation, and what an operator sees for a bad value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from janitor.cli import main
from janitor.config import LIST_FIELDS, Settings, load_settings
from janitor.errors import ConfigurationError
from tests.conftest import Houston, existing_roles, janitor

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
        ({"JANITOR_LOG_INDEX_PATTERNS": "*"}, "would address every index"),
        # Issue 10: patterns that sweep another cluster, something else, or nothing at all.
        (
            {"JANITOR_LOG_INDEX_PATTERNS": "remote:fluentd.*"},
            "JANITOR_LOG_INDEX_PATTERNS='remote:fluentd.*' (environment): pattern "
            "'remote:fluentd.*' names a remote cluster",
        ),
        ({"JANITOR_LOG_INDEX_PATTERNS": "fluentd.*,**"}, "pattern '**' would address every"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "-fluentd.*"}, "it starts with '-', which no index"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "_all"}, "it starts with '_'"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "+fluentd.*"}, "it starts with '+'"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "fluentd #1"}, "it holds ' ', which no index name"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "<fluentd-{now/d}>"}, "it holds '<', which no index"),
        ({"JANITOR_LOG_INDEX_PATTERNS": "Fluentd.*"}, "has capitals"),
        ({"JANITOR_LOG_INDEX_PATTERNS": ".ds-logs-airflow*"}, "name their data stream instead"),
        ({"JANITOR_LOG_INDEX_PATTERNS": ".*"}, "would address every hidden data stream"),
        ({"JANITOR_LOG_TIMESTRING": "%Y.%q"}, "unsupported directive %q"),
        (
            {"JANITOR_PROMETHEUS_CA_BUNDLE": "/nonexistent/ca.pem"},
            "JANITOR_PROMETHEUS_CA_BUNDLE='/nonexistent/ca.pem' (environment): no such file",
        ),
        ({"JANITOR_REGISTRY_CA_BUNDLE": "/nonexistent/ca.pem"}, "no such file"),
        ({"JANITOR_ELASTICSEARCH_CA_BUNDLE": "/nonexistent/ca.pem"}, "no such file"),
        # Issue 17: windows that overflowed datetime or PostgreSQL mid-run, now bounded.
        ({"JANITOR_LOG_RETENTION_DAYS": "800000"}, "JANITOR_LOG_RETENTION_DAYS='800000'"),
        ({"JANITOR_METRICS_RETENTION_DAYS": "9" * 20}, "must be at most 36500"),
        ({"JANITOR_RETENTION_DAYS": "3000000"}, "(environment): must be at most 36500"),
        ({"JANITOR_RETENTION_DAYS": "36501"}, "must be at most 36500"),
        ({"JANITOR_MAX_DELETIONS": "1000000001"}, "must be at most 1000000000"),
        ({"JANITOR_LEASE_DURATION_SECONDS": "3601"}, "must be at most 3600"),
        ({"JANITOR_CONCURRENCY": "9" * 5000}, "(5000 characters) (environment): is out of range"),
        ({"JANITOR_RETENTION_DAYS": "-" + "9" * 5000}, "is out of range"),
        ({"JANITOR_RETENTION_DAYS": "\u0661\u0665"}, "must be a whole number"),  # Arabic 15
        # Issue 17: timestrings that read every index as 1900-01-01.
        ({"JANITOR_LOG_TIMESTRING": "%d"}, "JANITOR_LOG_TIMESTRING='%d' (environment): must"),
        ({"JANITOR_LOG_TIMESTRING": "%H"}, "must name a calendar day"),
        ({"JANITOR_LOG_TIMESTRING": "%Y.%m"}, "must name a calendar day"),
        # Non-empty names are still checked before anything connects.
        ({"JANITOR_HOUSTON_TABLE": "D" * 64}, "longer than 63 bytes"),
        ({"JANITOR_HOUSTON_SCHEMA": "é" * 32}, "JANITOR_HOUSTON_SCHEMA"),
        ({"JANITOR_HOUSTON_DELETED_COLUMN": "d" * 64}, "JANITOR_HOUSTON_DELETED_COLUMN"),
        ({"JANITOR_HOUSTON_TABLE": "Deploy\udcffment"}, "is not UTF-8 text"),
        ({"JANITOR_LEASE_NAME": "Astro Janitor"}, "is not a Kubernetes object name"),
        ({"JANITOR_PROMETHEUS_NAME": "prometheus_main"}, "JANITOR_PROMETHEUS_NAME"),
        ({"JANITOR_LEASE_NAMESPACE": "astronomer.io"}, "is not a Kubernetes namespace"),
        ({"JANITOR_PROMETHEUS_NAMESPACE": "Monitoring"}, "is not a Kubernetes namespace"),
        ({"JANITOR_ELASTICSEARCH_URL": "http://es:9200/\t"}, "control characters"),
        # Issue 15: run metrics go to an http(s) Pushgateway, within a bounded time.
        (
            {"JANITOR_PUSHGATEWAY_URL": "pushgateway:9091"},
            "JANITOR_PUSHGATEWAY_URL='pushgateway:9091' (environment): must be an http://",
        ),
        (
            {"JANITOR_PUSHGATEWAY_URL": f"http://janitor:{SECRET}@gateway:9091/\n"},
            "JANITOR_PUSHGATEWAY_URL='http://janitor:***@gateway:9091/\\n' (environment)",
        ),
        ({"JANITOR_PUSHGATEWAY_TIMEOUT_SECONDS": "0"}, "must be a whole number >= 1"),
        ({"JANITOR_PUSHGATEWAY_TIMEOUT_SECONDS": "61"}, "must be at most 60"),
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


def test_a_pattern_may_name_a_hidden_data_stream() -> None:
    """Issue 10: a leading dot is allowed (README "Configuration"); the safety rules decide
    what of it may go."""
    settings = load_settings(
        {},
        {
            "JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9200",
            "JANITOR_LOG_INDEX_PATTERNS": "fluentd.*,.logs-airflow",
        },
    )

    assert settings.log_index_patterns == ("fluentd.*", ".logs-airflow")


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
    with pytest.raises(
        ConfigurationError,
        match=r"unknown setting 'retention_dayz' \(did you mean retention_days\?\)",
    ):
        load_settings({}, {}, config)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the file"),
        ("a: [", "not valid YAML: line 1, column 5: expected the node content"),
        ("- 1\n- 2\n", "must be a mapping"),
        # Issue 17: PyYAML keeps the last of two equal keys without a word.
        ("retention_days: 5\nconcurrency: 2\nretention_days: 50\n", "line 3: 'retention_days'"),
        ("retention_days: 5\nJANITOR_RETENTION_DAYS: 50\n", "are the same setting"),
        # Issue 17: tracebacks (int() digit limit, decoding, recursion) instead of one line.
        ("retention_days: " + "9" * 5000 + "\n", "retention_days='9999"),
        ("houston_table: " + "9" * 5000 + "\n", "longer than 63 bytes"),
        (b"retention_days: \xff15\n", "not UTF-8 text (byte 16)"),
        ("a: " + "[" * 100_000, "nested too deeply"),
        ("retention_days: 1\x005\n", "not valid YAML: character #x0000 at position 17"),
        ("retention_days: !!int fifteen\n", "line 1, column 17: the value does not read as"),
        ("dry_run: !!bool maybe\n", "line 1, column 10: the value does not read as"),
        ('houston_table: "Deploy\\0ment"\n', "houston_table='Deploy\\x00ment' (config file"),
    ],
)
def test_unreadable_or_malformed_config_file_exits_2(
    tmp_path: Path, content: str | bytes | None, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config pointing at a missing or broken file: one stderr line naming file or key, exit 2."""
    config = tmp_path / "janitor.yaml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    elif content is not None:
        config.write_text(content)

    code = main(["run", "--config", str(config)], environ={"JANITOR_HOUSTON_DSN": "host=x"})

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"janitor: invalid configuration: --config {config}: ") or (
        f"(config file {config})" in err
    )
    assert expected in err


@pytest.mark.parametrize(
    "line",
    [
        f"registry_password: {SECRET}: extra",  # mapping values are not allowed here
        f'houston_dsn: "postgresql://janitor:{SECRET}@db/houston',  # unterminated quote
        f"registry_password: *{SECRET}",  # an alias that names no anchor
        f"registry_password: !{SECRET} x",  # a tag that names no type
        f"registry_password: !{SECRET}! x",  # an undefined tag handle
        f"registry_password: [{SECRET}",  # unclosed flow sequence
    ],
)
def test_a_yaml_error_never_echoes_the_line_it_found(
    tmp_path: Path, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file with a syntax error in a password line: exit 2, one line with file, line
    and column, and never the password PyYAML would have quoted."""
    config = tmp_path / "janitor.yaml"
    config.write_text(f"retention_days: 15\n{line}\nconcurrency: 4\n")

    code = main(["run", "--config", str(config)], environ={"JANITOR_HOUSTON_DSN": "host=x"})

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert re.search(
        rf"--config {re.escape(str(config))}: not valid YAML: line \d+, column \d+: ", err
    )
    assert SECRET not in err


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_variable_means_the_default_for_every_setting(name: str, blank: str) -> None:
    """Helm renders an empty or null value as "": every JANITOR_* variable set so counts as
    not set, whatever the setting (issue 17: some failed the run, some were exit 2)."""
    settings = load_settings({}, {f"JANITOR_{name.upper()}": blank})

    assert getattr(settings, name) == Settings.model_fields[name].default


@pytest.mark.parametrize("empty", ["null", "''", "' '", "[]"])
def test_null_or_empty_yaml_values_mean_the_default_for_every_setting(
    tmp_path: Path, empty: str
) -> None:
    """In the config file, null, a blank string and (for lists) an empty list are not set."""
    names = LIST_FIELDS if empty == "[]" else Settings.model_fields
    config = tmp_path / "janitor.yaml"
    config.write_text("".join(f"{name}: {empty}\n" for name in names))

    settings = load_settings({}, {}, config)

    assert settings == Settings()


def test_an_empty_variable_lets_the_config_file_value_through(tmp_path: Path) -> None:
    """Empty means not set, so precedence goes on: the file's value, then the default."""
    config = tmp_path / "janitor.yaml"
    config.write_text("retention_days: 30\nhouston_table: Deployments\n")
    environ = {"JANITOR_RETENTION_DAYS": "", "JANITOR_HOUSTON_TABLE": " ", "JANITOR_ONLY": ""}

    settings = load_settings({"max_deletions": "", "only": None}, environ, config)

    assert (settings.retention_days, settings.houston_table) == (30, "Deployments")
    assert (settings.max_deletions, settings.only) == (0, None)


@pytest.mark.parametrize("value", [",", " , ,", ", "])
def test_a_list_of_blank_items_means_the_default(value: str) -> None:
    """Role templates or index patterns that name nothing are the defaults, never "none"."""
    environ = {"JANITOR_ROLE_TEMPLATES": value, "JANITOR_LOG_INDEX_PATTERNS": value}

    settings = load_settings({}, environ)

    assert settings.role_templates == ("{release_snake}_airflow", "{release_snake}_celery")
    assert settings.log_index_patterns == ("fluentd.*", "vector.*")


def test_the_upper_bounds_themselves_are_accepted() -> None:
    """The largest documented values load: 36500 days, 64 workers, a one-hour lease, a
    one-minute push."""
    environ = {
        "JANITOR_RETENTION_DAYS": "36500",
        "JANITOR_LOG_RETENTION_DAYS": "36500",
        "JANITOR_METRICS_RETENTION_DAYS": "036500",
        "JANITOR_MAX_DELETIONS": "1000000000",
        "JANITOR_CONCURRENCY": "64",
        "JANITOR_LEASE_DURATION_SECONDS": "3600",
        "JANITOR_PUSHGATEWAY_TIMEOUT_SECONDS": "60",
        "JANITOR_HOUSTON_TABLE": "D" * 63,
    }

    settings = load_settings({}, environ)

    assert settings.metrics_retention_days == 36500
    assert settings.houston_table == "D" * 63


def test_roles_are_dropped_when_helm_renders_role_templates_empty(
    houston: Houston, env: dict[str, str]
) -> None:
    """roleTemplates: [] renders JANITOR_ROLE_TEMPLATES="": the default roles still go with
    the database before the row is purged (issue 17: the roles were left for ever)."""
    release = houston.deployment("old", deleted_days_ago=20)
    snake = release.replace("-", "_")
    roles = [f"{snake}_airflow", f"{snake}_celery"]

    run = janitor(["run"], env | {"JANITOR_ROLE_TEMPLATES": ""})

    assert run.code == 0
    assert run.outcomes("role.drop") == dict.fromkeys(roles, "done")
    assert run.outcomes("deployment.purge") == {release: "done"}
    assert existing_roles(roles) == set()


def test_a_janitor_variable_that_names_no_setting_is_warned_about(
    houston: Houston, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo like JANITOR_RETENTION_DAY gets one stderr line with a suggestion and the run
    goes on; the test suite's JANITOR_TEST_* variables are not settings and not warned of."""
    environ = env | {
        "JANITOR_RETENTION_DAY": "30",
        "JANITOR_TEST_PG_HOST": "127.0.0.1",
        "JANITOR_ZZZ": "1",
    }

    run = janitor(["plan"], environ)

    assert run.code == 0
    assert capsys.readouterr().err.splitlines() == [
        "janitor: warning: JANITOR_RETENTION_DAY is not a setting and is ignored "
        "(did you mean JANITOR_RETENTION_DAYS?)",
        "janitor: warning: JANITOR_ZZZ is not a setting and is ignored",
    ]


def test_empty_endpoints_are_not_configured() -> None:
    """An empty endpoint from Helm leaves its subsystem out of the run."""
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
        "JANITOR_REGISTRY_USERNAME": "janitor",
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
