"""Hostile input, part 2 (issue 11): registry and Elasticsearch answers that try to steer
the janitor's requests. A name from an answer that is not a valid tag or index name is
never put into a request path: it is ``failed`` with an error naming it, and nothing else
is dropped (README "Registry tags", "Log indices").

One run serves every case: each expired deployment's tag listing is rewritten by the
fault proxy before the real registry to carry one hostile tag next to its real ``1.0``,
and the Elasticsearch stand-in holds one old index per hostile name beside an ordinary old
one and a young one. tests/test_registry_sweeper.py proves three such tags on the sweeper
alone (``../../…``, ``a b``, ``v1?x=1``); tests/test_registry_client.py the client's own
refusals and ``Link`` headers leading elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import pytest

from tests.conftest import Houston, Run, houston_database, janitor
from tests.es_standin import ElasticsearchStandin, running_standin
from tests.fault_proxy import Answer, HttpProxy, Rule
from tests.fleet import server_now
from tests.registry_server import Registry, registry  # noqa: F401 - pytest fixture
from tests.world import ES_PRODUCT

HOSTILE_TAGS: dict[str, object] = {
    "tag with '/'": "1.0/../../victim",
    "tag '..'": "..",
    "tag with %2F": "%2F..%2Fvictim%2Fairflow",
    "tag with '?'": "1.0?n=1",
    "tag with '#'": "1.0#x",
    "tag with a space": "1 0",
    "tag of 129 characters": "x" * 129,
    "empty tag": "",
    "tag starting with '-'": "-latest",
    "tag with Cyrillic a": "l\u0430test",
    "tag with a newline": "1.0\n",
}
BAD_DIGEST = "sha256:../../victim/airflow/manifests/1.0"
HOSTILE_INDICES: dict[str, str] = {
    "index with '/'": "a/../b",
    "index with '?'": "x?pretty",
    "index with ',' naming the young one": "x,{young}",
    "index with '*'": "*",
    "index with '#'": "x#y",
    "index with a space": "x y",
    "index with a newline": "x\n",
}
# Odd but valid index names (Elasticsearch forbids "..", not ".." inside a name, and allows
# "%"): deleted by their exact name, every "%" sent as %25 so the server reads it literally.
ODD_VALID_INDICES: dict[str, str] = {
    "index ending in '..'": "..",
    "index with %2F.. and _all": "%2F..%2F_all",
}


@dataclass(frozen=True)
class Steered:
    """The one run against rewritten answers, and what the servers hold afterwards."""

    houston: Houston
    run: Run
    registry: Registry
    proxy: HttpProxy
    es: ElasticsearchStandin
    es_proxy: HttpProxy
    releases: dict[str, str]
    """Case -> the release whose listing carries it."""
    indices: dict[str, str]
    ordinary: str
    young: str
    victim: str

    def registry_requests(self) -> list[str]:
        """Every registry request but the (rewritten) tag listings, percent-decoded."""
        return [
            unquote(target)
            for method, target in self.proxy.requests
            if not (method == "GET" and "/tags/list" in target)
        ]

    def es_deletes(self) -> list[str]:
        """The DELETE request targets sent to Elasticsearch, as sent."""
        return [target for method, target in self.es_proxy.requests if method == "DELETE"]


@pytest.fixture(scope="module")
def steered(registry: Registry) -> Iterator[Steered]:  # noqa: F811 - the imported fixture
    """Seeds the registry, the stand-in and Houston for every case, then runs once."""
    with houston_database() as houston, running_standin() as es:
        proxy, es_proxy = HttpProxy(registry.url), HttpProxy(es.url, ES_PRODUCT)
        try:
            yield _run(houston, registry, proxy, es, es_proxy)
        finally:
            proxy.close()
            es_proxy.close()


def _run(
    houston: Houston,
    registry: Registry,  # noqa: F811 - the imported fixture
    proxy: HttpProxy,
    es: ElasticsearchStandin,
    es_proxy: HttpProxy,
) -> Steered:
    pusher = registry.pusher()
    victim = houston.release("victim")
    pusher.image(f"{victim}/airflow", "1.0", label=victim)
    releases = {}
    for n, (case, tag) in enumerate({**HOSTILE_TAGS, "bad digest": None}.items()):
        release = houston.release(f"tag{n}")
        releases[case] = release
        houston.add(release, deleted_days_ago=40)
        pusher.image(f"{release}/airflow", "1.0", label=release)
        if tag is None:
            digest = (("Docker-Content-Digest", BAD_DIGEST),)
            path = f"/v2/{release}/airflow/manifests/"
            proxy.add(Rule("HEAD", path, Answer(200, b"", digest), times=None))
        else:
            listing = {"name": f"{release}/airflow", "tags": ["1.0", tag]}
            body = json.dumps(listing).encode()
            path = f"/v2/{release}/airflow/tags/list"
            proxy.add(Rule("GET", path, Answer(200, body), times=None))
    now = server_now()
    prefix = f"fluentd.{houston.prefix}-"
    young, ordinary = f"{prefix}young", f"{prefix}ordinary"
    es.add_index(young, now - timedelta(days=1))
    es.add_index(ordinary, now - timedelta(days=30))
    indices = {}
    for case, suffix in {**HOSTILE_INDICES, **ODD_VALID_INDICES}.items():
        indices[case] = prefix + suffix.format(young=young)
        es.add_index(indices[case], now - timedelta(days=30))
    env = {
        "JANITOR_HOUSTON_DSN": houston.dsn,
        "JANITOR_REGISTRY_URL": proxy.url,
        "JANITOR_ELASTICSEARCH_URL": es_proxy.url,
        "JANITOR_LOG_INDEX_PATTERNS": f"{prefix}*",
    }
    run = janitor(["run"], env)
    return Steered(
        houston, run, registry, proxy, es, es_proxy, releases, indices, ordinary, young, victim
    )


def _event(run: Run, event: str, target: str) -> dict[str, Any]:
    (found,) = [e for e in run.of(event) if e["target"] == target]
    return found


def test_the_run_fails_where_an_answer_was_hostile_and_drops_nothing_else(
    steered: Steered,
) -> None:
    """Exit 1; the victim repository, the young index and every row stay; the ordinary
    old index goes; no request other than a listing names a hostile tag or index."""
    assert steered.run.code == 1
    assert steered.registry.pusher().tags(f"{steered.victim}/airflow") == ["1.0"]
    assert steered.young in steered.es.index_names()
    assert steered.ordinary not in steered.es.index_names()
    assert _event(steered.run, "logs.index.delete", steered.ordinary)["outcome"] == "done"
    assert set(steered.releases.values()) <= set(steered.houston.rows())
    assert not [t for t in steered.registry_requests() if steered.victim in t]
    assert not [t for t in steered.es_deletes() if steered.young in unquote(t)]


@pytest.mark.parametrize("case", list(HOSTILE_TAGS))
def test_a_hostile_tag_in_a_listing_is_failed_by_name_and_never_requested(
    steered: Steered, case: str
) -> None:
    """The listing of an expired deployment's repository names the hostile tag beside its
    real 1.0: the hostile one is failed naming it, never put into a request; the real tag
    is deleted, and the row stays (the repository was not fully swept)."""
    tag = str(HOSTILE_TAGS[case])
    release = steered.releases[case]
    repository = f"{release}/airflow"
    hostile = _event(steered.run, "registry.tag.delete", f"{repository}:{tag}")
    assert hostile["outcome"] == "failed"
    assert f"{tag!r}" in hostile["error"]
    assert "not a valid tag name" in hostile["error"]
    assert _event(steered.run, "registry.tag.delete", f"{repository}:1.0")["outcome"] == "done"
    purge = _event(steered.run, "deployment.purge", release)
    assert purge["outcome"] in ("skipped", "failed")
    assert release in steered.houston.rows()
    if tag:
        assert not [t for t in steered.registry_requests() if f"/{tag}" in t]


def test_a_digest_header_that_climbs_out_of_the_repository_is_never_requested(
    steered: Steered,
) -> None:
    """A Docker-Content-Digest of `sha256:../../victim/...` fails the tag with the header
    named; no DELETE is sent for it, the tag and the row stay."""
    release = steered.releases["bad digest"]
    event = _event(steered.run, "registry.tag.delete", f"{release}/airflow:1.0")
    assert event["outcome"] == "failed"
    assert "invalid Docker-Content-Digest header" in event["error"]
    assert steered.registry.pusher().tags(f"{release}/airflow") == ["1.0"]
    assert not [t for t in steered.registry_requests() if "victim/airflow" in t]
    assert release in steered.houston.rows()


@pytest.mark.parametrize("case", list(HOSTILE_INDICES))
def test_a_hostile_index_name_in_the_listing_is_failed_by_name_and_never_deleted(
    steered: Steered, case: str
) -> None:
    """An old index whose name would put a path, query, wildcard or second name into the
    DELETE line is failed naming it and stays; no DELETE names it."""
    name = steered.indices[case]
    event = _event(steered.run, "logs.index.delete", name)
    assert event["outcome"] == "failed"
    assert f"{name!r}" in event["error"]
    assert "not touched" in event["error"]
    assert name in steered.es.index_names()
    assert not [t for t in steered.es_deletes() if name in unquote(t)]


@pytest.mark.parametrize("case", list(ODD_VALID_INDICES))
def test_an_odd_but_valid_index_name_is_deleted_by_its_exact_name(
    steered: Steered, case: str
) -> None:
    """`fluentd.x-..` and `fluentd.x-%2F..%2F_all` are valid names: deleted, with every
    `%` sent escaped (never decoded into a path or `_all` by the server)."""
    name = steered.indices[case]
    assert _event(steered.run, "logs.index.delete", name)["outcome"] == "done"
    assert name not in steered.es.index_names()
    assert [t for t in steered.es_deletes() if name.replace("%", "%25") in t]
