"""The Elasticsearch stand-in behaves like Elasticsearch 8 on the calls the janitor relies on.

Every test here that does not configure the server runs against a real cluster too, when
JANITOR_TEST_ELASTICSEARCH_URL names one: that is how the stand-in is kept honest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from elasticsearch import BadRequestError, Elasticsearch, NotFoundError

from tests.es_standin import (
    MAX_INITIAL_LINE,
    Cluster,
    Grants,
    es_cluster,
    filter_path,
    request_lines,
    running_standin,
    standin_only,
)

__all__ = ["es_cluster"]  # the fixture, imported for pytest

COMPAT_8 = "application/vnd.elasticsearch+json; compatible-with=8"


def raw(
    cluster: Cluster, method: str, path: str, headers: dict[str, str] | None = None
) -> requests.Response:
    """One plain HTTP request with the cluster's credentials, bypassing the client."""
    sent = {"Accept": COMPAT_8, **(headers or {})}
    if cluster.api_key:
        sent["Authorization"] = f"ApiKey {cluster.api_key}"
    verify: Any = str(cluster.ca_bundle) if cluster.ca_bundle else True
    return requests.request(method, cluster.url + path, headers=sent, verify=verify, timeout=30)


def raw_status(url: str) -> int:
    return requests.get(url, headers={"Accept": COMPAT_8}, timeout=10).status_code


def error_of(response: requests.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_every_answer_names_the_product_and_answers_in_the_compatible_media_type(
    es_cluster: Cluster,
) -> None:
    """GET / carries X-Elastic-Product and answers compatible-with=8 in kind, errors too."""
    info = raw(es_cluster, "GET", "/")
    assert info.status_code == 200
    assert info.headers["X-Elastic-Product"] == "Elasticsearch"
    assert "compatible-with=8" in info.headers["Content-Type"].replace(" ", "")
    assert info.json()["version"]["number"].split(".")[0] in ("8", "9")
    missing = raw(es_cluster, "GET", f"/{es_cluster.prefix}-nothing/_settings")
    assert missing.status_code == 404
    assert missing.headers["X-Elastic-Product"] == "Elasticsearch"


def test_a_compatible_version_the_server_cannot_serve_is_a_media_type_error(
    es_cluster: Cluster,
) -> None:
    """compatible-with=6 is refused by 8.x and 9.x alike: 400 media_type_header_exception."""
    answer = raw(
        es_cluster, "GET", "/", {"Accept": "application/vnd.elasticsearch+json; compatible-with=6"}
    )
    assert answer.status_code == 400
    assert error_of(answer)["type"] == "media_type_header_exception"


def test_a_request_line_over_4096_bytes_is_refused_and_one_of_4096_is_served(
    es_cluster: Cluster,
) -> None:
    """http.max_initial_line_length: 4096 bytes of method, target and protocol pass, 4097 not."""
    prefix = "GET /"
    suffix = "/_settings?ignore_unavailable=true HTTP/1.1"
    names: list[str] = []
    while len(prefix + ",".join(names) + suffix) < MAX_INITIAL_LINE - 250:
        names.append(f"{es_cluster.prefix}-{len(names):04d}-" + "x" * 200)
    pad = MAX_INITIAL_LINE - len(prefix + ",".join(names) + "," + suffix)
    names.append(f"{es_cluster.prefix}-" + "y" * (pad - len(es_cluster.prefix) - 1))
    path = "/" + ",".join(names) + "/_settings?ignore_unavailable=true"
    assert len(f"GET {path} HTTP/1.1") == MAX_INITIAL_LINE

    fits = raw(es_cluster, "GET", path)
    too_long = raw(es_cluster, "GET", path.replace("-y", "-yy", 1))

    assert fits.status_code == 200
    assert fits.json() == {}
    assert too_long.status_code == 400
    assert error_of(too_long)["type"] == "too_long_http_line_exception"
    assert error_of(too_long)["reason"] == "An HTTP line is larger than 4096 bytes."


def test_delete_refuses_wildcards_and_deletes_nothing(es_cluster: Cluster) -> None:
    """action.destructive_requires_name: DELETE with a wildcard is a 400 and nothing goes."""
    first = es_cluster.create_index(es_cluster.name("fluentd", "a.2026.11.01"))
    second = es_cluster.create_index(es_cluster.name("fluentd", "b.2026.11.01"))

    with pytest.raises(BadRequestError) as refused:
        es_cluster.admin.indices.delete(index=f"fluentd.{es_cluster.prefix}-*")

    assert refused.value.body["error"]["reason"] == (
        "Wildcard expressions or all indices are not allowed"
    )
    assert es_cluster.existing() == {first, second}


def test_a_delete_naming_a_missing_index_fails_whole_and_names_it(es_cluster: Cluster) -> None:
    """DELETE a,missing is a 404 naming the missing index; a stays until ignore_unavailable."""
    kept = es_cluster.create_index(es_cluster.name("fluentd", "a.2026.11.01"))
    missing = es_cluster.name("fluentd", "gone.2026.11.01")

    with pytest.raises(NotFoundError) as absent:
        es_cluster.admin.indices.delete(index=[kept, missing])

    error = absent.value.body["error"]
    assert error["type"] == "index_not_found_exception"
    assert error["index"] == missing
    assert es_cluster.existing() == {kept}
    es_cluster.admin.indices.delete(index=[kept, missing], ignore_unavailable=True)
    assert es_cluster.existing() == set()


def test_wildcards_expand_to_open_and_closed_but_hidden_only_when_asked(
    es_cluster: Cluster,
) -> None:
    """expand_wildcards=open,closed leaves hidden indices out; all (the default) brings them."""
    open_ = es_cluster.create_index(es_cluster.name("fluentd", "open"))
    closed = es_cluster.create_index(es_cluster.name("fluentd", "closed"), closed=True)
    hidden = es_cluster.create_index(es_cluster.name("fluentd", "hidden"), hidden=True)
    pattern = f"fluentd.{es_cluster.prefix}-*"

    narrow = es_cluster.admin.indices.get_settings(index=pattern, expand_wildcards="open,closed")
    default = es_cluster.admin.indices.get_settings(index=pattern)
    explicit = es_cluster.admin.indices.get_settings(index=hidden, expand_wildcards="open")

    assert set(narrow.body) == {open_, closed}
    assert set(default.body) == {open_, closed, hidden}
    assert narrow.body[open_]["settings"]["index"]["provided_name"] == open_
    assert explicit.body[hidden]["settings"]["index"]["hidden"] == "true"


def test_filter_path_keeps_just_the_listed_settings(es_cluster: Cluster) -> None:
    """filter_path=*.settings.index.creation_date,*.settings.index.hidden trims the listing."""
    created = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    plain = es_cluster.create_index(es_cluster.name("fluentd", "plain"), created)
    hidden = es_cluster.create_index(es_cluster.name("fluentd", "hid"), created, hidden=True)

    answer = es_cluster.admin.indices.get_settings(
        index=[plain, hidden],
        filter_path=["*.settings.index.creation_date", "*.settings.index.hidden"],
    )

    millis = str(int(created.timestamp() * 1000))
    assert answer.body == {
        plain: {"settings": {"index": {"creation_date": millis}}},
        hidden: {"settings": {"index": {"creation_date": millis, "hidden": "true"}}},
    }


def test_missing_names_are_404_unless_ignored_and_empty_wildcards_unless_disallowed(
    es_cluster: Cluster,
) -> None:
    """ignore_unavailable covers missing names, allow_no_indices=false makes empty wildcards 404."""
    missing = es_cluster.name("fluentd", "missing")
    nothing = f"vector.{es_cluster.prefix}-*"

    with pytest.raises(NotFoundError):
        es_cluster.admin.indices.get_settings(index=missing)
    with pytest.raises(NotFoundError):
        es_cluster.admin.indices.get_settings(index=nothing, allow_no_indices=False)

    ignored = es_cluster.admin.indices.get_settings(index=missing, ignore_unavailable=True)
    assert ignored.body == {}
    assert es_cluster.admin.indices.get_settings(index=nothing).body == {}


def test_a_data_stream_name_brings_its_backing_indices_and_its_write_index_cannot_go(
    es_cluster: Cluster,
) -> None:
    """A wildcard on a stream's name lists its hidden backing indices; the last one stays."""
    stream = es_cluster.name("vector", "stream")
    older, write = es_cluster.create_data_stream(stream, generations=2)
    pattern = f"vector.{es_cluster.prefix}-*"

    listing = es_cluster.admin.indices.get_settings(
        index=pattern, expand_wildcards="open,closed", filter_path=["*.settings.index.hidden"]
    )
    streams = es_cluster.admin.indices.get_data_stream(name=pattern)
    with pytest.raises(BadRequestError) as refused:
        es_cluster.admin.indices.delete(index=[older, write])

    assert older.startswith(f".ds-{stream}-")
    assert set(listing.body) == {older, write}
    assert listing.body[write]["settings"]["index"]["hidden"] == "true"
    assert [i["index_name"] for i in streams.body["data_streams"][0]["indices"]] == [older, write]
    assert refused.value.body["error"]["reason"] == (
        f"index [{write}] is the write index for data stream [{stream}] and cannot be deleted"
    )
    es_cluster.admin.indices.delete(index=older)
    assert es_cluster.backing_indices(stream) == [write]


def test_get_data_stream_is_404_for_a_missing_name_and_empty_for_an_unmatched_wildcard(
    es_cluster: Cluster,
) -> None:
    """GET _data_stream has no ignore_unavailable: an exact name must exist."""
    with pytest.raises(NotFoundError):
        es_cluster.admin.indices.get_data_stream(name=es_cluster.name("vector", "none"))

    answer = es_cluster.admin.indices.get_data_stream(name=f"vector.{es_cluster.prefix}-*")

    assert answer.body == {"data_streams": []}


def test_the_get_index_api_shows_aliases_settings_and_the_data_stream_of_a_backing_index(
    es_cluster: Cluster,
) -> None:
    """GET /<targets> answers aliases (is_write_index only where set), mappings, settings
    (index.lifecycle.name among them) and, for a backing index, its data_stream."""
    created = datetime(2026, 11, 1, tzinfo=UTC)
    policy = f"{es_cluster.prefix}-policy"
    index = es_cluster.create_index(es_cluster.name("fluentd", "a"), created, lifecycle=policy)
    writes, plain = f"{es_cluster.prefix}-writes", f"{es_cluster.prefix}-plain"
    es_cluster.add_alias(index, writes, is_write_index=True)
    es_cluster.add_alias(index, plain)
    stream = es_cluster.name("vector", "stream")
    (backing,) = es_cluster.create_data_stream(stream)

    full = es_cluster.admin.indices.get(index=index).body[index]
    trimmed = es_cluster.admin.indices.get(
        index=[index, backing],
        filter_path=["*.aliases", "*.data_stream", "*.settings.index.lifecycle.name"],
    ).body

    assert set(full) >= {"aliases", "mappings", "settings"}
    assert full["aliases"] == {plain: {}, writes: {"is_write_index": True}}
    assert full["settings"]["index"]["creation_date"] == str(int(created.timestamp() * 1000))
    assert trimmed[index] == {
        "aliases": {plain: {}, writes: {"is_write_index": True}},
        "settings": {"index": {"lifecycle": {"name": policy}}},
    }
    assert trimmed[backing]["data_stream"] == stream


def test_get_alias_lists_every_index_of_the_named_aliases_and_404s_a_missing_one(
    es_cluster: Cluster,
) -> None:
    """GET _alias/<names> answers each index holding one of them, hidden ones included; a
    missing name is a 404 that still lists what was found."""
    first = es_cluster.create_index(es_cluster.name("fluentd", "first"))
    hidden = es_cluster.create_index(es_cluster.name("fluentd", "hidden"), hidden=True)
    alias, missing = f"{es_cluster.prefix}-shared", f"{es_cluster.prefix}-missing"
    for index in (first, hidden):
        es_cluster.add_alias(index, alias, is_write_index=index == first)

    found = es_cluster.admin.indices.get_alias(name=alias, expand_wildcards="all").body
    with pytest.raises(NotFoundError) as refused:
        es_cluster.admin.indices.get_alias(name=[alias, missing], expand_wildcards="all")

    assert found == {
        first: {"aliases": {alias: {"is_write_index": True}}},
        hidden: {"aliases": {alias: {"is_write_index": False}}},
    }
    assert refused.value.body == {"error": f"alias [{missing}] missing", "status": 404, **found}


def test_a_dot_wildcard_reaches_hidden_dot_names_and_no_other_hidden_ones(
    es_cluster: Cluster,
) -> None:
    """A wildcard starting with "." matches hidden indices and data streams whose names
    start with "." without expand_wildcards=hidden; other hidden names stay out."""
    dotted = es_cluster.create_index(f".{es_cluster.prefix}-logs-x", hidden=True)
    stream = f".{es_cluster.prefix}-logs-stream"
    (backing,) = es_cluster.create_data_stream(stream, hidden=True)
    es_cluster.create_index(es_cluster.name("fluentd", "hidden"), hidden=True)

    listing = es_cluster.admin.indices.get(
        index=[f".{es_cluster.prefix}-logs-*", f"fluentd.{es_cluster.prefix}-*"],
        expand_wildcards="open,closed",
        filter_path=["*.settings.index.hidden"],
    ).body
    streams = es_cluster.admin.indices.get_data_stream(name=f".{es_cluster.prefix}-logs-*").body

    assert set(listing) == {dotted, backing}
    assert [s["name"] for s in streams["data_streams"]] == [stream]


def test_deleting_an_index_a_snapshot_holds_is_refused_naming_it() -> None:
    """400 snapshot_in_progress_exception naming [name/uuid]; nothing of the batch goes."""
    standin_only()
    with running_standin() as standin:
        for name in ("held", "free"):
            standin.add_index(name, datetime.now(UTC))
        standin.start_snapshot("held")
        admin = Elasticsearch(standin.url)

        with pytest.raises(BadRequestError) as refused:
            admin.indices.delete(index=["free", "held"])

        error = refused.value.body["error"]
        held = f"held/{standin.indices['held'].uuid}"
        assert error["type"] == "snapshot_in_progress_exception"
        assert error["reason"] == (
            f"Cannot delete indices that are being snapshotted: [[{held}]]. Try again after "
            "snapshot finishes or cancel the currently running snapshot."
        )
        assert standin.index_names() == {"held", "free"}


def test_delete_by_an_alias_name_is_refused(es_cluster: Cluster) -> None:
    """DELETE /<alias> is a 400: deletes take concrete index names only."""
    index = es_cluster.create_index(es_cluster.name("fluentd", "real"))
    alias = es_cluster.name("fluentd", "alias")
    es_cluster.add_alias(index, alias)

    with pytest.raises(BadRequestError) as refused:
        es_cluster.admin.indices.delete(index=alias)

    assert "matches an alias" in refused.value.body["error"]["reason"]
    assert es_cluster.existing() == {index}


def test_an_unknown_query_parameter_is_refused(es_cluster: Cluster) -> None:
    """A typo in a parameter is a 400, never silently ignored."""
    answer = raw(es_cluster, "GET", f"/{es_cluster.prefix}-x/_settings?ignore_unavailabel=true")

    assert answer.status_code == 400
    assert "unrecognized parameter: [ignore_unavailabel]" in error_of(answer)["reason"]


def test_standin_counts_requests_and_answers_injected_faults_once() -> None:
    """The benchmark's request counter, and fail_next for the retry tests."""
    standin_only()
    with running_standin(latency_s=0.001) as standin:
        client = Elasticsearch(standin.url, max_retries=0)
        standin.fail_next("GET", 429)

        first = raw_status(standin.url)
        client.info()

        assert first == 429
        assert request_lines(standin) == ["GET / HTTP/1.1", "GET / HTTP/1.1"]


def test_standin_security_authenticates_and_answers_has_privileges() -> None:
    """Basic and ApiKey logins; _has_privileges reports grants, pattern by pattern."""
    standin_only()
    grants = Grants(
        cluster=frozenset({"monitor"}),
        indices=((("fluentd.*",), frozenset({"view_index_metadata", "delete_index"})),),
    )
    with running_standin(
        users={"janitor": ("s3cret", grants)}, api_keys={"a2V5": ("key", grants)}
    ) as standin:
        anonymous = requests.get(standin.url, headers={"Accept": COMPAT_8}, timeout=10)
        wrong = requests.get(standin.url, auth=("janitor", "nope"), timeout=10)
        by_key = Elasticsearch(standin.url, api_key="a2V5").info()
        answer = Elasticsearch(
            standin.url, basic_auth=("janitor", "s3cret")
        ).security.has_privileges(
            cluster=["monitor"],
            index=[{"names": ["fluentd.*", "vector.*"], "privileges": ["delete_index"]}],
        )

        assert anonymous.status_code == 401
        assert wrong.status_code == 401
        assert by_key["version"]["number"] == "8.19.0"
        assert answer.body == {
            "username": "janitor",
            "has_all_requested": False,
            "cluster": {"monitor": True},
            "index": {"fluentd.*": {"delete_index": True}, "vector.*": {"delete_index": False}},
            "application": {},
        }


def test_standin_without_security_answers_has_privileges_with_500() -> None:
    """Elasticsearch 8 with security off: 'Security is not enabled but a ... handler'."""
    standin_only()
    with running_standin() as standin:
        answer = requests.post(
            standin.url + "/_security/user/_has_privileges",
            json={"cluster": ["monitor"]},
            timeout=10,
        )

        assert answer.status_code == 500
        assert "Security is not enabled" in answer.json()["error"]["reason"]


def test_filter_path_matches_whole_field_names_and_drops_what_is_left_empty() -> None:
    """A * segment matches a dotted index name whole; paths that match nothing vanish."""
    document = {
        "fluentd.a.2026.11.01": {"settings": {"index": {"creation_date": "1", "uuid": "u"}}},
        "data_streams": [],
    }

    assert filter_path(document, "*.settings.index.creation_date") == {
        "fluentd.a.2026.11.01": {"settings": {"index": {"creation_date": "1"}}}
    }
    assert filter_path(document, "**.uuid") == {
        "fluentd.a.2026.11.01": {"settings": {"index": {"uuid": "u"}}}
    }
    assert filter_path({"data_streams": []}, "data_streams.name") == {}


def test_index_creation_date_can_be_set_at_creation(es_cluster: Cluster) -> None:
    """The fixtures backdate indices through index.creation_date, as Elasticsearch allows."""
    created = datetime.now(UTC) - timedelta(days=40)
    name = es_cluster.create_index(es_cluster.name("fluentd", "old"), created)

    settings = es_cluster.admin.indices.get_settings(index=name)

    expected = str(int(created.timestamp() * 1000))
    assert settings.body[name]["settings"]["index"]["creation_date"] == expected
