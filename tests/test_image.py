"""The container image as operators run it (issue 16): built on this machine by
scripts/image.py (`make image`) with Docker or buildah, run as the chart runs it (UID 10001, a
read-only root filesystem, no home, only /tmp writable) against the same loopback services the
in-process tests use, and compared with the same commands run outside the image."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from elasticsearch import Elasticsearch

from janitor import __version__
from tests.conftest import (
    Houston,
    Run,
    existing_databases,
    existing_roles,
    houston_database,
    janitor,
)
from tests.es_standin import Cluster, running_standin
from tests.prometheus_server import running_prometheus
from tests.registry_server import Registry, registry  # noqa: F401 - pytest fixture

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "image.py"
FACTS = ROOT / "build" / "image.json"
PIP_LIST = ROOT / "build" / "image-pip-list.txt"
# A cold build (a new Debian base, every wheel downloaded) takes about two minutes here.
BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 300

# Run inside the image: who the process is and where it may write.
WHOAMI = """
import json, os

def writable(directory):
    try:
        with open(os.path.join(directory, ".probe"), "w"):
            return "writable"
    except OSError as error:
        return error.strerror

status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "groups": os.getgroups(),
    "home": os.environ.get("HOME"),
    "home_exists": os.path.exists(os.environ.get("HOME", "/nonexistent")),
    "capabilities": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "root": writable("/"),
    "venv": writable("/opt/janitor"),
    "tmp": writable("/tmp"),
}))
"""


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """This checkout's image, built once per module (from the build cache when unchanged)."""
    engine = subprocess.run(
        [sys.executable, str(SCRIPT), "engine"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if engine.returncode != 0:
        pytest.skip(f"no container engine can run here: {engine.stderr.strip()}")
    built = subprocess.run(
        [sys.executable, str(SCRIPT), "build"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, (built.stdout + built.stderr)[-6000:]
    facts: dict[str, Any] = json.loads(FACTS.read_text())
    return facts


def in_image(
    args: list[str], env: Mapping[str, str], entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker run` of the last build with ``env``'s JANITOR_* variables (scripts/image.py)."""
    command = [sys.executable, str(SCRIPT), "run"]
    command += ["--entrypoint", entrypoint] if entrypoint else []
    return subprocess.run(
        [*command, "--", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def janitor_in_image(args: list[str], env: Mapping[str, str]) -> Run:
    """The image's ENTRYPOINT with ``args``, read like the in-process `janitor` helper."""
    result = in_image([*args, "--log-format", "json"], env)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert events, f"exit {result.returncode}, no events; stderr: {result.stderr[-3000:]}"
    return Run(result.returncode, events)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_build_gets_the_hosts_pip_index_proxy_and_ca_as_secrets_and_no_local_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose pip uses a mirror, a proxy and its own CA: the build's pip.conf secret has
    the http(s) indexes, the proxy and the CA bundle; file:// indexes and find-links stay out."""
    spec = importlib.util.spec_from_file_location("image_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    ca = tmp_path / "proxy-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this host's config files stay out
    monkeypatch.setenv("PIP_INDEX_URL", "https://user:secret@mirror.invalid/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple https://extra.invalid/x")
    monkeypatch.setenv("PIP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_CERT", str(ca))
    secrets = tmp_path / "secrets"
    secrets.mkdir()

    script.write_pip_secrets(secrets)

    conf = configparser.ConfigParser()
    conf.read(secrets / "pip.conf")
    assert dict(conf["global"]) == {
        "index-url": "https://user:secret@mirror.invalid/simple",
        "extra-index-url": "https://extra.invalid/x",
        "proxy": "http://proxy.invalid:3128",
        "cert": "/run/secrets/pip-cert.pem",
    }
    assert (secrets / "pip-cert.pem").read_text() == ca.read_text()


def test_the_image_runs_janitor_run_as_uid_10001_and_records_what_it_ships(
    image: dict[str, Any],
) -> None:
    """The image starts `janitor run` as 10001:10001, and its pip list, recorded at build
    time, names this version and every dependency, and neither pip nor setuptools."""
    assert image["user"] == "10001:10001"
    assert image["entrypoint"] == ["janitor"]
    assert image["cmd"] == ["run"]
    shipped = {
        canonical(name): version
        for name, version in (line.split("==") for line in PIP_LIST.read_text().split())
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert shipped["astro-janitor"] == __version__
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert name is not None
        assert canonical(name[0]) in shipped, requirement
    assert "psycopg-binary" in shipped  # libpq comes with psycopg[binary]: no apt in the image
    assert not {"pip", "setuptools"} & set(shipped)


def test_inside_the_image_the_janitor_is_uid_10001_on_a_read_only_root_without_a_home(
    image: dict[str, Any],
) -> None:
    """As the chart's securityContext runs it: UID/GID 10001, no capabilities, no_new_privs,
    the root and the venv read-only, HOME pointing nowhere, only /tmp writable."""
    result = in_image(["-c", WHOAMI], {}, entrypoint="python3")

    assert result.returncode == 0, result.stderr
    who = json.loads(result.stdout)
    assert (who["uid"], who["gid"]) == (10001, 10001)
    assert set(who["groups"]) <= {10001}  # the chart's fsGroup, where the runtime adds it
    assert (who["capabilities"], who["no_new_privs"]) == ("0000000000000000", "1")
    assert who["root"] == who["venv"] == "Read-only file system"
    assert (who["home"], who["home_exists"]) == ("/nonexistent", False)
    assert who["tmp"] == "writable"


def test_the_image_carries_a_pg_dump_the_janitor_finds_for_the_test_server(
    image: dict[str, Any], houston: Houston
) -> None:
    """Final backups need pg_dump and pg_restore no older than the Airflow server: inside
    the image the janitor finds Debian's postgresql-client for this test server's major."""
    with psycopg.connect(houston.dsn) as conn:
        version = conn.info.server_version
    probe = f"from janitor.backup import find_tools; print(repr(find_tools({version})))"

    result = in_image(["-c", probe], {}, entrypoint="python3")

    assert result.returncode == 0, result.stderr
    major = version // 10000
    assert result.stdout.strip() == (
        f"Tools(pg_dump='/usr/lib/postgresql/{major}/bin/pg_dump', "
        f"pg_restore='/usr/lib/postgresql/{major}/bin/pg_restore', major={major})"
    )


@dataclass(frozen=True)
class Fleet:
    """One platform's worth of test services; two of them differ only in their names."""

    houston: Houston
    cluster: Cluster
    registry: Registry
    prometheus: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "JANITOR_HOUSTON_DSN": self.houston.dsn,
            "JANITOR_REGISTRY_URL": self.registry.url,
            "JANITOR_ELASTICSEARCH_URL": self.cluster.url,
            "JANITOR_LOG_INDEX_PATTERNS": ",".join(self.cluster.patterns),
            "JANITOR_PROMETHEUS_URL": self.prometheus,
        }

    def seed(self) -> list[str]:
        """An expired, a recent and a live deployment, each with its database, roles and
        images (the expired one single- and multi-arch, two tags on one digest); a 16- and
        a 14-day-old log index. Returns the release names."""
        expired = self.houston.deployment("old", deleted_days_ago=20)
        recent = self.houston.deployment("recent", deleted_days_ago=3)
        live = self.houston.deployment("live")
        pusher = self.registry.pusher()
        single = pusher.image(f"{expired}/airflow", "1.0.0")
        pusher.put_manifest(f"{expired}/airflow", "latest", single)
        pusher.index(f"{expired}/airflow", "multi", oci=True)
        for release in (recent, live):
            pusher.image(f"{release}/airflow", "1.0.0")
        now = datetime.now(UTC)
        self.cluster.create_index(self.cluster.name("fluentd", "old"), now - timedelta(days=16))
        self.cluster.create_index(self.cluster.name("vector", "young"), now - timedelta(days=14))
        return [expired, recent, live]

    def neutral(self, value: Any) -> Any:
        """``value`` with this fleet's names made the same as the other fleet's."""
        text = json.dumps(value, sort_keys=True, default=str)
        text = text.replace(self.houston.prefix, "<houston>").replace(self.cluster.prefix, "<es>")
        return json.loads(text)

    def actions(self, run: Run) -> list[list[str]]:
        """Outcome per event and target, in a stable order (the run is concurrent)."""
        triples = [[e["event"], e["target"], e["outcome"]] for e in run.events if "target" in e]
        return sorted(self.neutral(triples))

    def state(self, releases: list[str]) -> Any:
        pusher = self.registry.pusher()
        return self.neutral(
            {
                "rows": sorted(self.houston.rows()),
                "databases": sorted(existing_databases(self.houston.databases)),
                "roles": sorted(existing_roles(self.houston.roles)),
                "tags": {r: pusher.tags(f"{r}/airflow") or [] for r in releases},
                "indices": sorted(self.cluster.existing()),
            }
        )


@pytest.fixture
def fleets(registry: Registry, tmp_path: Path) -> Iterator[tuple[Fleet, Fleet]]:  # noqa: F811
    """Two like fleets on one registry, Elasticsearch stand-in and Prometheus (15 days)."""
    with (
        running_prometheus(tmp_path / "prometheus", "--storage.tsdb.retention.time=15d") as url,
        running_standin() as standin,
        houston_database() as first,
        houston_database() as second,
    ):
        admin = Elasticsearch(standin.url)

        def fleet(houston: Houston) -> Fleet:
            cluster = Cluster(standin.url, admin, f"jt{uuid.uuid4().hex[:8]}", standin)
            return Fleet(houston, cluster, registry, url)

        yield fleet(first), fleet(second)
        admin.close()


def test_version_check_and_run_in_the_image_match_the_same_commands_outside_it(
    image: dict[str, Any], fleets: tuple[Fleet, Fleet]
) -> None:
    """`janitor --version`, `check` and `run` inside the image on one fleet and outside it on
    a like one: same output, exit codes, outcome per event and target, and end state."""
    inside, outside = fleets
    expired, recent, live = releases = inside.seed()
    outside_releases = outside.seed()

    version = in_image(["--version"], {})
    here = subprocess.run(
        [sys.executable, "-m", "janitor", "--version"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout == here.stdout == f"janitor {image['tag'].split(':')[1]}\n"

    check_inside = janitor_in_image(["check"], inside.env)
    check_outside = janitor(["check"], outside.env)
    assert check_inside.code == check_outside.code == 0, check_inside.events
    assert inside.actions(check_inside) == outside.actions(check_outside)
    assert check_inside.outcomes("check.component") == dict.fromkeys(
        ["houston", "airflow-databases", "registry", "elasticsearch", "prometheus"], "ok"
    )

    run_inside = janitor_in_image(["run"], inside.env)
    run_outside = janitor(["run"], outside.env)
    assert run_inside.code == run_outside.code == 0, run_inside.events
    assert inside.actions(run_inside) == outside.actions(run_outside)
    assert run_inside.finished["counts"] == run_outside.finished["counts"]
    assert inside.state(releases) == outside.state(outside_releases)

    snake = expired.replace("-", "_")
    assert run_inside.outcomes("database.drop") == {f"{snake}_airflow": "done"}
    assert run_inside.outcomes("role.drop") == {
        f"{snake}_airflow": "done",
        f"{snake}_celery": "done",
    }
    assert run_inside.outcomes("registry.tag.delete") == {
        f"{expired}/airflow:{tag}": "done" for tag in ("1.0.0", "latest", "multi")
    }
    assert run_inside.outcomes("deployment.purge") == {expired: "done"}
    assert run_inside.outcomes("logs.index.delete") == {
        inside.cluster.name("fluentd", "old"): "done"
    }
    assert run_inside.outcomes("metrics.retention.check") == {inside.prometheus: "ok"}
    state = inside.state(releases)
    assert state["rows"] == inside.neutral(sorted([recent, live]))
    assert state["tags"] == inside.neutral({expired: [], recent: ["1.0.0"], live: ["1.0.0"]})
    assert state["indices"] == inside.neutral([inside.cluster.name("vector", "young")])
