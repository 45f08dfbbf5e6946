"""Secret hygiene (issue 11): a distinctive value in every secret setting, then every command
and every way a remote can fail; no secret, nor its percent-encoded or base64 (basic auth)
form, appears on stdout, stderr, in any event or in the Kubernetes summary Event (README
"Configuration": secrets never appear in any log line).

The secret settings are those of janitor.config.SECRET_FIELDS, plus the user info of every
endpoint URL and the AWS secret key the S3 backup store reads. One registry (basic auth with
the registry password below) and one Elasticsearch stand-in serve the module.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from janitor.cli import main
from janitor.config import SECRET_FIELDS
from tests.conftest import PG_HOST, PG_PORT, Houston, houston_database
from tests.es_standin import ElasticsearchStandin, Grants, running_standin
from tests.fault_proxy import Answer, HttpProxy, Reset, Rule, Truncate
from tests.fleet import server_now
from tests.loopback import free_port
from tests.registry_server import USERNAME, Registry, run_registry
from tests.test_always_finishes import (
    Kubernetes,
    kubernetes,  # noqa: F401 - pytest fixture
    posted,
    run_in_cluster,
)
from tests.world import ES_PRODUCT

HOUSTON_PW = "pw-Houston-7f3a/%@:é"
AIRFLOW_PW = "pw-Airflow-3b8d 9e"
REGISTRY_PW = "pw-Registry-5c1e40"
WRONG_REGISTRY_PW = "pw-Wrong-Registry-0d0d"
REGISTRY_TOKEN = "tok-Registry-a9f1c3d7"
ES_PW = "pw-Elastic-88aa21"
ES_API_KEY = "key-ES-ZGVtbzpzZWNyZXQ"
PROMETHEUS_PW = "pw-Prometheus-7171"
PROMETHEUS_TOKEN = "tok-Prometheus-6e6e"
PUSHGATEWAY_PW = "pw-Push-4d4d4d"
AWS_SECRET = "aws-Secret-Key-wJalrXUtnFEMI-K7MDENG"
SECRETS = (
    HOUSTON_PW,
    AIRFLOW_PW,
    REGISTRY_PW,
    WRONG_REGISTRY_PW,
    REGISTRY_TOKEN,
    ES_PW,
    ES_API_KEY,
    PROMETHEUS_PW,
    PROMETHEUS_TOKEN,
    PUSHGATEWAY_PW,
    AWS_SECRET,
)
ES_USER = "janitor-es"
LATER = (("Retry-After", "3600"),)


def forms(secret: str) -> set[str]:
    """Every shape in which ``secret`` could leak: as is, percent-encoded, and inside a
    basic auth header (base64 of ``user:secret`` for each user of this module)."""
    shapes = {secret, quote(secret, safe=""), quote(secret)}
    for user in (USERNAME, ES_USER, "janitor"):
        shapes.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return shapes


def test_every_secret_setting_is_given_a_distinctive_value() -> None:
    """The module covers each SecretStr setting: a new one must be added here."""
    covered = {
        "houston_dsn",
        "airflow_dsn",
        "registry_password",
        "registry_token",
        "elasticsearch_password",
        "elasticsearch_api_key",
        "prometheus_password",
        "prometheus_token",
    }
    assert covered == SECRET_FIELDS


@dataclass(frozen=True)
class Stores:
    registry: Registry
    registry_proxy: HttpProxy
    es: ElasticsearchStandin
    es_proxy: HttpProxy
    houston: Houston


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """A basic-auth registry knowing REGISTRY_PW, an Elasticsearch stand-in knowing ES_PW
    and ES_API_KEY, each behind a fault proxy, and a Houston database."""
    grants = Grants(frozenset({"monitor"}), ((("*",), frozenset({"all"})),))
    directory = tmp_path_factory.mktemp("hygiene")
    with (
        run_registry(directory, htpasswd={USERNAME: REGISTRY_PW}) as registry,
        running_standin(
            users={ES_USER: (ES_PW, grants)}, api_keys={ES_API_KEY: (ES_USER, grants)}
        ) as es,
        houston_database() as houston,
    ):
        registry_proxy, es_proxy = HttpProxy(registry.url), HttpProxy(es.url, ES_PRODUCT)
        try:
            yield Stores(registry, registry_proxy, es, es_proxy, houston)
        finally:
            registry_proxy.close()
            es_proxy.close()


@dataclass(frozen=True)
class Seen:
    """Everything one invocation showed: exit code, stdout, stderr, Kubernetes Events."""

    code: int
    text: str


def _base_env(stores: Stores, release: str) -> dict[str, str]:
    """Every secret setting set; the stores reached through their proxies; Prometheus and
    the Pushgateway on closed ports (connection refused)."""
    houston = stores.houston
    closed = f"127.0.0.1:{free_port()}"
    quoted = quote(HOUSTON_PW, safe="")
    return {
        "JANITOR_HOUSTON_DSN": f"postgresql://postgres:{quoted}@{PG_HOST}:{PG_PORT}/{houston.dbname}",
        "JANITOR_AIRFLOW_DSN": f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
        f" password='{AIRFLOW_PW}'",
        "JANITOR_REGISTRY_URL": stores.registry_proxy.url,
        "JANITOR_REGISTRY_USERNAME": USERNAME,
        "JANITOR_REGISTRY_PASSWORD": REGISTRY_PW,
        "JANITOR_ELASTICSEARCH_URL": stores.es_proxy.url,
        "JANITOR_ELASTICSEARCH_USERNAME": ES_USER,
        "JANITOR_ELASTICSEARCH_PASSWORD": ES_PW,
        "JANITOR_LOG_INDEX_PATTERNS": f"fluentd.{release}-*",
        "JANITOR_PROMETHEUS_URL": f"http://{closed}",
        "JANITOR_PROMETHEUS_USERNAME": "janitor",
        "JANITOR_PROMETHEUS_PASSWORD": PROMETHEUS_PW,
        "JANITOR_PUSHGATEWAY_URL": f"http://janitor:{PUSHGATEWAY_PW}@{closed}",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_ACCESS_KEY_ID": "AKIAJANITORTEST",
    }


Variant = Callable[[Stores, dict[str, str]], dict[str, str]]


def _same(_: Stores, env: dict[str, str]) -> dict[str, str]:
    return env


def _registry_fault(rule: Rule) -> Variant:
    def variant(stores: Stores, env: dict[str, str]) -> dict[str, str]:
        stores.registry_proxy.add(rule)
        return env

    return variant


def _es_fault(rule: Rule) -> Variant:
    def variant(stores: Stores, env: dict[str, str]) -> dict[str, str]:
        stores.es_proxy.add(rule)
        return env

    return variant


def _token_variant(stores: Stores, env: dict[str, str]) -> dict[str, str]:
    del env["JANITOR_REGISTRY_USERNAME"], env["JANITOR_REGISTRY_PASSWORD"]
    del env["JANITOR_PROMETHEUS_USERNAME"], env["JANITOR_PROMETHEUS_PASSWORD"]
    del env["JANITOR_ELASTICSEARCH_USERNAME"], env["JANITOR_ELASTICSEARCH_PASSWORD"]
    return env | {
        "JANITOR_REGISTRY_TOKEN": REGISTRY_TOKEN,
        "JANITOR_PROMETHEUS_TOKEN": PROMETHEUS_TOKEN,
        "JANITOR_ELASTICSEARCH_API_KEY": ES_API_KEY,
    }


def _credentials_in_urls(stores: Stores, env: dict[str, str]) -> dict[str, str]:
    del env["JANITOR_REGISTRY_USERNAME"], env["JANITOR_REGISTRY_PASSWORD"]
    del env["JANITOR_ELASTICSEARCH_USERNAME"], env["JANITOR_ELASTICSEARCH_PASSWORD"]
    registry = stores.registry_proxy.url.replace("://", f"://{USERNAME}:{REGISTRY_PW}@")
    es = stores.es_proxy.url.replace("://", f"://{ES_USER}:{quote(ES_PW)}@")
    return env | {"JANITOR_REGISTRY_URL": registry, "JANITOR_ELASTICSEARCH_URL": es}


def _wrong_passwords(_: Stores, env: dict[str, str]) -> dict[str, str]:
    return env | {"JANITOR_REGISTRY_PASSWORD": WRONG_REGISTRY_PW}


def _wrong_es_password(_: Stores, env: dict[str, str]) -> dict[str, str]:
    return env | {"JANITOR_ELASTICSEARCH_PASSWORD": WRONG_REGISTRY_PW}


def _tls_to_plain_http(stores: Stores, env: dict[str, str]) -> dict[str, str]:
    return env | {"JANITOR_REGISTRY_URL": stores.registry.url.replace("http:", "https:")}


def _refused_with_credentials_in_the_url(stores: Stores, env: dict[str, str]) -> dict[str, str]:
    """The registry URL carries the password and refuses connections: the client's error
    after its retries names the URL; the Airflow server refuses too."""
    env = _credentials_in_urls(stores, env)
    return env | {
        "JANITOR_AIRFLOW_DSN": env["JANITOR_AIRFLOW_DSN"].replace(f"port={PG_PORT}", "port=1"),
        "JANITOR_REGISTRY_URL": f"http://{USERNAME}:{REGISTRY_PW}@127.0.0.1:{free_port()}",
    }


def _bad_setting(_: Stores, env: dict[str, str]) -> dict[str, str]:
    return env | {"JANITOR_RETENTION_DAYS": "0"}


def _malformed_dsn(_: Stores, env: dict[str, str]) -> dict[str, str]:
    return env | {"JANITOR_HOUSTON_DSN": env["JANITOR_HOUSTON_DSN"].replace(PG_PORT, "port")}


def _unencoded_dsn(_: Stores, env: dict[str, str]) -> dict[str, str]:
    dsn = f"postgresql://postgres:{HOUSTON_PW}@{PG_HOST}:{PG_PORT}/houston"
    return env | {"JANITOR_HOUSTON_DSN": dsn}


def _s3_backups_unreachable(_: Stores, env: dict[str, str]) -> dict[str, str]:
    return env | {
        "JANITOR_BACKUP_URL": "s3://janitor-backups/final",
        "JANITOR_BACKUP_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    }


# id -> (command line, how the environment or remotes are changed, exit codes it may end in)
SCENARIOS: dict[str, tuple[list[str], Variant, set[int]]] = {
    "run, Prometheus and Pushgateway refused": (["run"], _same, {1}),
    "plan": (["plan"], _same, {1}),
    "check": (["check"], _same, {1}),
    "audit": (["audit"], _same, {0, 1}),
    "run --log-format console": (["run", "--log-format", "console"], _same, {1}),
    "tokens and API key instead of passwords": (["run"], _token_variant, {1}),
    "credentials in the registry and ES URLs": (["run"], _credentials_in_urls, {1}),
    "registry 401 for a wrong password": (["run"], _wrong_passwords, {1}),
    "Elasticsearch 401 for a wrong password": (["run"], _wrong_es_password, {1, 2}),
    # Retry-After past the wait budget fails at once (README "HTTP"), keeping the test short.
    "registry 500": (
        ["run"],
        _registry_fault(Rule("*", "/v2/", Answer(500, b"", LATER), None)),
        {1},
    ),
    "registry connection reset": (["run"], _registry_fault(Rule("GET", "/v2/", Reset(), 9)), {1}),
    "registry truncated JSON": (
        ["run"],
        _registry_fault(Rule("GET", "/tags/list", Truncate(), None)),
        {1},
    ),
    "TLS to a plain HTTP registry": (["run"], _tls_to_plain_http, {1}),
    "connection refused, password in the URL": (
        ["run"],
        _refused_with_credentials_in_the_url,
        {1},
    ),
    "crash inside the logs sweeper": (
        ["run"],
        _es_fault(Rule("GET", "^/fluentd", Answer(200, b'{"fluentd.x-1": []}'), None)),
        {1},
    ),
    "configuration error (exit 2)": (["run"], _bad_setting, {2}),
    "malformed DSN (exit 2)": (["run"], _malformed_dsn, {2}),
    "DSN with an unencoded '%' and '@' (exit 2)": (["run"], _unencoded_dsn, {2}),
    "S3 backup store unreachable": (["run"], _s3_backups_unreachable, {1}),
}


def _seed(stores: Stores, tag: str) -> str:
    """An expired deployment (a row, one image, one old log index) for one scenario."""
    release = stores.houston.release(tag)
    stores.houston.add(release, deleted_days_ago=40)
    stores.registry.pusher().image(f"{release}/airflow", "1.0", label=release)
    stores.es.add_index(f"fluentd.{release}-old", server_now() - timedelta(days=30))
    return release


def _seen(args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Seen:
    out = io.StringIO()
    code = main(args if "--log-format" in args else [*args, "--log-format", "json"], env, out)
    captured = capsys.readouterr()
    return Seen(code, out.getvalue() + captured.out + captured.err)


def _assert_clean(text: str) -> None:
    leaks = [(s, f) for s in SECRETS for f in forms(s) if f in text]
    assert leaks == [], text[-3000:]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_reaches_any_output(
    stores: Stores, scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every secret setting holds a distinctive value; whatever the command and however
    the remotes fail, stdout and stderr hold none of them in any form."""
    args, variant, codes = SCENARIOS[scenario]
    stores.registry_proxy.clear()
    stores.es_proxy.clear()
    release = _seed(stores, f"s{list(SCENARIOS).index(scenario)}")
    env = variant(stores, _base_env(stores, release))

    seen = _seen(args, env, capsys)

    assert seen.code in codes, seen.text[-3000:]
    _assert_clean(seen.text)


def test_a_secret_quoted_back_by_a_config_file_error_is_masked(
    stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A YAML alias made of the registry password (PyYAML quotes what it could not
    resolve): exit 2, and the password is not on stderr."""
    release = _seed(stores, "yaml")
    env = _base_env(stores, release)
    config = tmp_path / "janitor.yaml"
    config.write_text(f"registry_password: *{REGISTRY_PW}\n")

    seen = _seen(["run", "--config", str(config)], env, capsys)

    assert seen.code == 2
    _assert_clean(seen.text)


def test_the_kubernetes_summary_event_holds_no_secret(
    stores: Stores,
    kubernetes: Kubernetes,  # noqa: F811 - the imported fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failing run in a cluster posts its Warning Event on the CronJob: the Event's
    body (message, reason, annotations) holds no secret, nor do the run's lines."""
    release = _seed(stores, "k8s")
    env = _wrong_passwords(stores, _base_env(stores, release))

    result = run_in_cluster(env, kubernetes)

    assert result.code == 1
    (event,) = posted(kubernetes)
    assert event["type"] == "Warning"
    _assert_clean(json.dumps(event) + json.dumps(result.events) + capsys.readouterr().err)
