"""The registry client against real distribution 2.8.2 registries: listing, digests,
deletion, every auth mode, and registries that misbehave."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from janitor.clients import http
from janitor.clients.registry import RegistryError, parse_challenge
from janitor.config import load_settings
from janitor.errors import ConfigurationError
from tests.loopback import finishes
from tests.registry_server import (
    FAST,
    PASSWORD,
    READER,
    USERNAME,
    Fault,
    Proxy,
    Registry,
    TokenIssuer,
    basic_registry,
    connect,
    free_port,
    make_proxy,
    readonly_registry,
    registry,
    scope_front_end,
    token_registry,
    unique_release,
)

__all__ = ["basic_registry", "make_proxy", "readonly_registry", "registry", "token_registry"]

MakeProxy = Callable[..., Proxy]


def repo() -> str:
    return f"{unique_release()}/airflow"


def test_lists_every_tag_and_reports_an_unknown_repository(registry: Registry) -> None:
    """All tags of a repository come back; a repository the registry never saw is None."""
    name = repo()
    pusher = registry.pusher()
    image = pusher.image(name, "1.0.0")
    for tag in ("latest", "stable"):
        pusher.put_manifest(name, tag, image)

    client = connect(registry)

    assert sorted(client.list_tags(name) or []) == ["1.0.0", "latest", "stable"]
    assert client.list_tags(repo()) is None


def test_follows_link_pages_of_a_paginating_registry(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """With 2 tags per page, 5 tags take 3 listing requests, each following Link rel=next."""
    name = repo()
    pusher = registry.pusher()
    image = pusher.image(name, "t1")
    for tag in ("t2", "t3", "t4", "t5"):
        pusher.put_manifest(name, tag, image)
    proxy = make_proxy(registry.url, page_size=2)

    tags = connect(registry, proxy.url).list_tags(name)

    assert tags == ["t1", "t2", "t3", "t4", "t5"]
    assert proxy.counts["GET tags"] == 3


def test_refuses_a_page_link_that_leaves_the_repository(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """A Link header pointing at another repository is an error, never followed."""
    name, other = repo(), repo()
    registry.pusher().image(name, "v1")
    registry.pusher().image(other, "v1")
    proxy = make_proxy(registry.url)
    proxy.inject(
        Fault(
            "GET",
            f"/v2/{name}/tags/list",
            200,
            json.dumps({"name": name, "tags": ["v1"]}).encode(),
            {"Link": f'</v2/{other}/tags/list?n=1&last=v0>; rel="next"'},
        )
    )

    with pytest.raises(RegistryError, match="leaves the repository"):
        connect(registry, proxy.url).list_tags(name)
    assert not [path for _, path in proxy.paths if other in path]


def test_a_proxy_that_ignores_last_fails_the_listing_instead_of_looping(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """A proxy dropping last= serves page one again and again: the listing of that repository
    fails on the second page, naming it, instead of asking for ever."""
    name = repo()
    pusher = registry.pusher()
    image = pusher.image(name, "t1")
    for tag in ("t2", "t3"):
        pusher.put_manifest(name, tag, image)
    proxy = make_proxy(registry.url, page_size=2, ignore_last=True)
    client = connect(registry, proxy.url)

    with pytest.raises(RegistryError) as looping:
        finishes(lambda: client.list_tags(name))

    assert str(looping.value) == (
        f"the tag listing of {name} goes round in circles: page 2 repeats 't1' from an "
        "earlier page (does the registry or a proxy in front of it ignore last=?)"
    )
    assert proxy.counts["GET tags"] == 2


def test_a_page_linking_back_to_a_page_already_read_ends_the_listing(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """An empty page whose Link names a last= already asked for is not asked for again."""
    name = repo()
    registry.pusher().image(name, "v1")
    proxy = make_proxy(registry.url)
    again = f"/v2/{name}/tags/list?n=50&last=v0"
    proxy.inject(
        Fault(
            "GET",
            f"/v2/{name}/tags/list",
            200,
            json.dumps({"name": name, "tags": []}).encode(),
            {"Link": f'<{again}>; rel="next"'},
            times=None,
        )
    )
    client = connect(registry, proxy.url)

    with pytest.raises(RegistryError) as looping:
        finishes(lambda: client.list_tags(name))

    assert str(looping.value) == (
        f"the tag listing of {name} goes round in circles: page 2 links back to a page "
        f"already read ({again})"
    )
    assert proxy.counts["GET tags"] == 2


def test_a_listing_past_the_page_bound_fails(registry: Registry, make_proxy: MakeProxy) -> None:
    """A registry that keeps linking new pages is read up to the bound, not further: with a
    bound of 3 pages, 5 one-tag pages fail the listing after 3 requests."""
    name = repo()
    pusher = registry.pusher()
    image = pusher.image(name, "t1")
    for tag in ("t2", "t3", "t4", "t5"):
        pusher.put_manifest(name, tag, image)
    proxy = make_proxy(registry.url, page_size=1)
    client = connect(registry, proxy.url, max_pages=3)

    with pytest.raises(RegistryError) as endless:
        client.list_tags(name)

    assert str(endless.value) == (
        f"the tag listing of {name} did not end after 3 pages (the most the janitor reads "
        "for one repository)"
    )
    assert proxy.counts["GET tags"] == 3


def test_the_catalog_is_read_in_the_pages_the_registry_links(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """At 2 repositories a page, distribution pages its catalog itself: every repository
    comes back once, in as many requests as pages, each following Link rel=next."""
    names = sorted(repo() for _ in range(5))
    for name in names:
        registry.pusher().image(name, "v1")
    proxy = make_proxy(registry.url)

    listed = connect(registry, proxy.url, catalog_page_size=2).list_repositories()

    assert set(names) <= set(listed)
    assert len(listed) == len(set(listed))
    catalog = [path for _, path in proxy.paths if path.startswith("/v2/_catalog")]
    assert len(catalog) == -(-len(listed) // 2)
    assert all("last=" in path for path in catalog[1:])


@pytest.mark.parametrize(
    ("page", "link", "refusal"),
    [
        (
            ["a/airflow"],
            "/v2/a/airflow/tags/list?n=1",
            "the catalog links to /v2/a/airflow/tags/list, which leaves the catalog: not followed",
        ),
        (
            ["a/airflow"],
            "/v2/_catalog?n=1&last=0",
            "the catalog goes round in circles: page 2 repeats 'a/airflow' from an earlier page "
            "(does the registry or a proxy in front of it ignore last=?)",
        ),
        (
            [],
            "/v2/_catalog?n=1000",
            "the catalog goes round in circles: page 1 links back to a page already read "
            "(/v2/_catalog?n=1000)",
        ),
    ],
    ids=["leaves the catalog", "repeats a name", "links back"],
)
def test_a_catalog_that_misleads_the_client_fails_instead_of_looping(
    registry: Registry, make_proxy: MakeProxy, page: list[str], link: str, refusal: str
) -> None:
    """The catalog is followed with the same bounds as a tag listing: a Link out of it, a
    page repeating a name, a link back to a page already read each fail the listing."""
    proxy = make_proxy(registry.url)
    body = json.dumps({"repositories": page}).encode()
    proxy.inject(Fault("GET", "/v2/_catalog", 200, body, {"Link": f'<{link}>; rel="next"'}, None))
    client = connect(registry, proxy.url)

    with pytest.raises(RegistryError) as misled:
        finishes(client.list_repositories)

    assert str(misled.value) == refusal
    assert not [path for _, path in proxy.paths if "tags/list" in path]


@pytest.mark.parametrize(
    ("link", "refusal"),
    [
        (
            "{other}/v2/{name}/tags/list?last=v1",
            "links to another server: expected {proxy}, got {other}; not followed",
        ),
        (
            "{proxy_https}/v2/{name}/tags/list?last=v1",
            "links to another server: expected {proxy}, got {proxy_https}; not followed",
        ),
        (
            "http://127.0.0.1:99999/v2/{name}/tags/list?last=v1",
            "links to another server: expected {proxy}, got http://127.0.0.1:99999; not followed",
        ),
        (
            "{proxy_with_user}/v2/{name}/tags/list?last=v1",
            "links to a URL with user info in it: not followed",
        ),
    ],
    ids=["another port", "another scheme", "a port out of range", "user info"],
)
def test_a_page_link_to_another_server_names_both_origins_and_is_not_followed(
    registry: Registry, make_proxy: MakeProxy, link: str, refusal: str
) -> None:
    """A Link to another scheme, host or port is refused naming the origin expected and the
    one linked (scheme://host:port, never credentials); nothing is sent there."""
    name = repo()
    registry.pusher().image(name, "v1")
    proxy, other = make_proxy(registry.url), make_proxy(registry.url)
    urls = {
        "name": name,
        "proxy": proxy.url,
        "other": other.url,
        "proxy_https": proxy.url.replace("http://", "https://"),
        "proxy_with_user": proxy.url.replace("http://", "http://janitor:hunter2@"),
    }
    proxy.inject(
        Fault(
            "GET",
            f"/v2/{name}/tags/list",
            200,
            json.dumps({"name": name, "tags": ["v1"]}).encode(),
            {"Link": f'<{link.format(**urls)}>; rel="next"'},
        )
    )

    with pytest.raises(RegistryError) as refused:
        connect(registry, proxy.url).list_tags(name)

    assert str(refused.value) == f"the tag listing of {name} {refusal.format(**urls)}"
    assert "hunter2" not in str(refused.value)
    assert other.paths == []
    assert proxy.counts["GET tags"] == 1


def test_resolves_each_tag_to_the_digest_the_registry_stores(registry: Registry) -> None:
    """Single-arch, Docker manifest list and OCI index tags resolve to their own digest (the
    index, not a platform child); a tag that does not exist resolves to None."""
    name = repo()
    pusher = registry.pusher()
    single = pusher.image(name, "single")
    docker_list = pusher.index(name, "docker-list", oci=False)
    oci_index = pusher.index(name, "oci-index", oci=True)
    client = connect(registry)

    assert client.resolve_digest(name, "single") == single.digest
    assert client.resolve_digest(name, "docker-list") == docker_list.digest
    assert client.resolve_digest(name, "oci-index") == oci_index.digest
    assert client.resolve_digest(name, "never-pushed") is None


def test_without_a_digest_header_an_answer_that_is_no_manifest_is_refused(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """A front-end that drops Docker-Content-Digest and answers the GET with a login page:
    no digest is guessed from bytes that are not a manifest; the error says why."""
    name = repo()
    registry.pusher().image(name, "1.0.0")
    proxy = make_proxy(registry.url, drop_headers=frozenset({"docker-content-digest"}))
    page = Fault("GET", "/manifests/", 200, b"<html>log in</html>", {"Content-Type": "text/html"})
    proxy.inject(page)

    with pytest.raises(RegistryError) as refused:
        connect(registry, proxy.url).resolve_digest(name, "1.0.0")

    assert str(refused.value) == (
        f"registry answered {name}:1.0.0 as 'text/html' without a Docker-Content-Digest "
        "header: its digest cannot be derived"
    )
    assert proxy.counts["HEAD manifests"] == proxy.counts["GET manifests"] == 1


def test_deleting_a_digest_removes_every_tag_on_it_and_repeating_is_harmless(
    registry: Registry,
) -> None:
    """One DELETE removes both tags of a shared digest; a second DELETE reports it gone."""
    name = repo()
    pusher = registry.pusher()
    shared = pusher.image(name, "a")
    pusher.put_manifest(name, "b", shared)
    kept = pusher.image(name, "c", label="other")
    client = connect(registry)

    assert client.delete_manifest(name, shared.digest) is True
    assert client.delete_manifest(name, shared.digest) is False
    assert pusher.tags(name) == ["c"]
    assert pusher.exists(name, kept.digest)


def test_deletion_disabled_tells_the_operator_which_setting_to_change(
    readonly_registry: Registry,
) -> None:
    """A registry with storage.delete.enabled=false refuses the DELETE; the error says so and
    the preflight reports it before any run."""
    name = repo()
    image = readonly_registry.pusher().image(name, "v1")
    client = connect(readonly_registry)

    with pytest.raises(RegistryError, match=r"storage\.delete\.enabled"):
        client.delete_manifest(name, image.digest)
    problems = client.check(name)

    assert len(problems) == 1
    assert "REGISTRY_STORAGE_DELETE_ENABLED=true" in problems[0]
    assert readonly_registry.pusher().tags(name) == ["v1"]


def test_basic_auth_with_htpasswd(basic_registry: Registry) -> None:
    """The htpasswd account lists and deletes; a wrong password is reported without the
    password and nothing is deleted."""
    name = repo()
    image = basic_registry.pusher().image(name, "v1")

    wrong = connect(basic_registry, password="wrong-password-123")
    problems = wrong.check(name)
    with pytest.raises(RegistryError, match="rejected the credentials") as rejected:
        wrong.list_tags(name)

    assert problems
    assert "rejected the credentials" in problems[0]
    assert "wrong-password-123" not in problems[0] + str(rejected.value)
    assert basic_registry.pusher().tags(name) == ["v1"]

    client = connect(basic_registry)
    assert client.check(name) == []
    assert client.delete_manifest(name, image.digest) is True
    assert basic_registry.pusher().tags(name) == []


def test_anonymous_client_is_told_to_configure_credentials(basic_registry: Registry) -> None:
    """Without credentials, a registry asking for basic auth names the settings to set."""
    problems = connect(basic_registry, username=None, password=None).check()

    assert problems
    assert "JANITOR_REGISTRY_USERNAME" in problems[0]


def test_token_flow_over_tls_fetches_one_token_per_scope(token_registry: Registry) -> None:
    """Behind auth: token on TLS with a custom CA, the client asks the token service once per
    scope (pull, delete) however many requests use it."""
    assert token_registry.issuer is not None
    name = repo()
    pusher = token_registry.pusher()
    images = [pusher.image(name, f"v{i}", label=str(i)) for i in range(3)]
    client = connect(token_registry)
    client.ping()
    token_registry.issuer.issued.clear()

    for image in images:
        assert client.resolve_digest(name, f"v{images.index(image)}") == image.digest
    client.list_tags(name)
    for image in images:
        client.delete_manifest(name, image.digest)

    assert sorted(scope for _, scope in token_registry.issuer.issued) == [
        f"repository:{name}:delete",
        f"repository:{name}:pull",
    ]
    assert pusher.tags(name) == []


def test_the_scope_asked_of_the_token_service_is_the_one_the_registry_challenges_with(
    registry: Registry, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A front-end wanting `*` for DELETE (older registries and some front-ends do): the
    janitor asks the token service for the scope the 401 challenge names, and for the next
    repository asks for `*` at once, without first being refused."""
    issuer = TokenIssuer(tmp_path, {USERNAME: (PASSWORD, frozenset({"pull", "*"}))})
    proxy = make_proxy(registry.url, gate=scope_front_end(issuer.url))
    names = [repo(), repo()]
    images = [registry.pusher().image(name, "1.0.0") for name in names]
    client = connect(registry, proxy.url, username=USERNAME, password=PASSWORD)
    try:
        for name, image in zip(names, images, strict=True):
            assert client.resolve_digest(name, "1.0.0") == image.digest
            assert client.delete_manifest(name, image.digest)
    finally:
        issuer.close()

    first, second = names
    assert [scope for _, scope in issuer.issued] == [
        "",  # the /v2/ login
        f"repository:{first}:pull",
        f"repository:{first}:delete",
        f"repository:{first}:*",
        f"repository:{second}:pull",
        f"repository:{second}:*",
    ]
    assert [registry.pusher().tags(name) for name in names] == [[], []]
    assert proxy.counts["DELETE manifests"] == 3, "refused once, then accepted twice"


def test_token_is_fetched_again_when_it_expires(token_registry: Registry) -> None:
    """A token past its expires_in (on the injected clock) is replaced before it is used."""
    assert token_registry.issuer is not None
    name = repo()
    token_registry.pusher().image(name, "v1")
    now = [1000.0]
    client = connect(token_registry, clock=lambda: now[0])
    client.list_tags(name)
    token_registry.issuer.issued.clear()

    client.list_tags(name)
    now[0] += token_registry.issuer.lifetime_s
    client.list_tags(name)

    assert token_registry.issuer.issued == [("janitor", f"repository:{name}:pull")]


def test_token_refused_by_the_registry_is_fetched_again(token_registry: Registry) -> None:
    """When the registry answers 401 to a cached token, the client gets a fresh one and the
    request succeeds."""
    assert token_registry.issuer is not None
    name = repo()
    token_registry.pusher().image(name, "v1")
    client = connect(token_registry)
    client.ping()
    token_registry.issuer.spoil_next = 1

    assert client.list_tags(name) == ["v1"]
    assert token_registry.issuer.spoil_next == 0


def test_account_without_delete_permission_is_named(token_registry: Registry) -> None:
    """A pull-only account can list but not delete; the error names the account and the
    permission it lacks, and the tag stays."""
    name = repo()
    image = token_registry.pusher().image(name, "v1")
    client = connect(token_registry, username=READER)

    assert client.list_tags(name) == ["v1"]
    with pytest.raises(RegistryError, match=f"did not grant.*{READER}.*delete"):
        client.delete_manifest(name, image.digest)
    assert any("cannot delete" in p for p in client.check(name))
    assert token_registry.pusher().tags(name) == ["v1"]


def test_wrong_password_for_the_token_service(token_registry: Registry) -> None:
    """Bad credentials at the token service are a clear error without the password."""
    problems = connect(token_registry, password="nope-nope-nope").check()

    assert problems
    assert "rejected JANITOR_REGISTRY_USERNAME=janitor" in problems[0]
    assert "nope-nope-nope" not in problems[0]


def test_static_bearer_token(token_registry: Registry) -> None:
    """A configured token is sent as is; a token the registry refuses is named by its
    setting, never printed."""
    assert token_registry.issuer is not None
    name = repo()
    image = token_registry.pusher().image(name, "v1")
    token = token_registry.issuer.mint(f"repository:{name}:pull,delete")
    client = connect(token_registry, username=None, password=None, token=token)

    assert client.check(name) == []
    assert client.delete_manifest(name, image.digest) is True

    bogus = connect(token_registry, username=None, password=None, token="bogus.token.value")
    problems = bogus.check()
    assert problems
    assert "JANITOR_REGISTRY_TOKEN" in problems[0]
    assert "bogus.token.value" not in problems[0]


def test_missing_ca_bundle_is_a_clear_tls_problem(token_registry: Registry) -> None:
    """A registry with a private CA and no JANITOR_REGISTRY_CA_BUNDLE fails verification."""
    problems = connect(token_registry, ca_bundle=None).check()

    assert problems
    assert "JANITOR_REGISTRY_CA_BUNDLE" in problems[0]


def test_preflight_of_a_healthy_registry_is_empty(registry: Registry) -> None:
    """check() finds nothing wrong with a reachable registry that allows deletion, and
    changes nothing."""
    name = repo()
    registry.pusher().image(name, "v1")

    assert connect(registry).check(name) == []
    assert registry.pusher().tags(name) == ["v1"]


def test_unreachable_registry(registry: Registry) -> None:
    """Nothing listening on the URL: a RegistryError naming the address."""
    client = connect(registry, f"http://127.0.0.1:{free_port()}")

    with pytest.raises(RegistryError, match=r"cannot reach http://127\.0\.0\.1:\d+ \(GET /v2/\)"):
        client.list_tags("any/airflow")
    assert client.check()


def test_a_web_server_that_is_not_a_registry(registry: Registry, make_proxy: MakeProxy) -> None:
    """An HTML page on /v2/ is a configuration error naming JANITOR_REGISTRY_URL."""
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("*", "/", 200, b"<html>hello</html>", {"Content-Type": "text/html"}, None))
    client = connect(registry, proxy.url)

    with pytest.raises(ConfigurationError, match=r"JANITOR_REGISTRY_URL.*not a Docker registry"):
        client.list_tags("any/airflow")
    assert "not a Docker registry" in client.check()[0]


def test_503_twice_then_recovering(registry: Registry, make_proxy: MakeProxy) -> None:
    """Two 503 answers are retried with backoff and the listing still succeeds."""
    name = repo()
    registry.pusher().image(name, "v1")
    proxy = make_proxy(registry.url)
    fault = proxy.inject(Fault("GET", "/tags/list", 503, b"busy", times=2))

    assert connect(registry, proxy.url).list_tags(name) == ["v1"]
    assert fault.served == 2
    assert proxy.counts["GET tags"] == 3


def test_persistent_503_is_an_error_with_the_registry_answer(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """When retries run out, the error carries the status and what the registry said."""
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("GET", "/tags/list", 503, b"upstream overloaded", times=None))

    with pytest.raises(RegistryError, match=r"503.*upstream overloaded"):
        connect(registry, proxy.url).list_tags(repo())


def test_a_429_asking_for_an_hour_fails_at_once(registry: Registry, make_proxy: MakeProxy) -> None:
    """Retry-After: 3600 is past the retry budget: no retry and no hour-long sleep; the
    listing fails with the 429, what the registry said, and the wait it asked for."""
    name = repo()
    registry.pusher().image(name, "v1")
    proxy = make_proxy(registry.url)
    throttled = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
    proxy.inject(
        Fault(
            "GET",
            "/tags/list",
            429,
            json.dumps(throttled).encode(),
            {"Content-Type": "application/json", "Retry-After": "3600"},
            times=None,
        )
    )
    client = connect(registry, proxy.url)

    with pytest.raises(RegistryError) as throttling:
        finishes(lambda: client.list_tags(name))

    assert str(throttling.value) == (
        f"registry answered 429 listing the tags of {name}: TOOMANYREQUESTS: slow down "
        "(Retry-After: 3600)"
    )
    assert proxy.counts["GET tags"] == 1


def test_waits_stop_at_the_retry_budget(registry: Registry, make_proxy: MakeProxy) -> None:
    """With 1 s per wait and 1.5 s in all, a 503 asking for 1 s is retried once; the second
    wait would pass the budget, so the second 503 is the answer."""
    name = repo()
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("GET", "/tags/list", 503, b"busy", {"Retry-After": "1"}, times=None))
    budget = replace(FAST, retries=4, backoff_max_s=1.0, wait_budget_s=1.5)

    with pytest.raises(RegistryError, match=r"^registry answered 503 .*: busy \(Retry-After: 1\)$"):
        connect(registry, proxy.url, options=budget).list_tags(name)

    assert proxy.counts["GET tags"] == 2


def test_an_unreadable_retry_after_is_retried_with_backoff(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """A 503 with Retry-After: soon is retried as if the header were absent, and the
    listing succeeds (urllib3 alone gives up on the header it cannot read)."""
    name = repo()
    registry.pusher().image(name, "v1")
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("GET", "/tags/list", 503, b"busy", {"Retry-After": "soon"}))

    assert connect(registry, proxy.url).list_tags(name) == ["v1"]
    assert proxy.counts["GET tags"] == 2


def test_https_to_a_plain_http_registry_says_to_use_http(registry: Registry) -> None:
    """JANITOR_REGISTRY_URL=https://… for a registry speaking plain HTTP: the error says to
    use http://, not to set a CA bundle."""
    url = registry.url.replace("http://", "https://")

    problems = connect(registry, url).check()

    assert problems == [
        f"the server at {url} speaks plain HTTP, not TLS: use http:// in JANITOR_REGISTRY_URL"
    ]


def test_http_to_a_registry_on_tls_says_to_use_https(token_registry: Registry) -> None:
    """JANITOR_REGISTRY_URL=http://… for a registry on TLS: a configuration error saying to
    use https://, not that the server is no registry."""
    url = token_registry.url.replace("https://", "http://")

    with pytest.raises(ConfigurationError) as refused:
        connect(token_registry, url).list_tags(repo())

    assert str(refused.value) == (
        f"the server at {url} speaks HTTPS: use https:// in JANITOR_REGISTRY_URL"
    )


def test_a_certificate_for_another_name_is_not_blamed_on_the_ca(token_registry: Registry) -> None:
    """https://localhost:… for a certificate issued to 127.0.0.1: the CA bundle is right and
    the error asks for the name the certificate holds instead."""
    url = token_registry.url.replace("127.0.0.1", "localhost")

    problems = connect(token_registry, url).check()

    assert len(problems) == 1
    assert "certificate is not valid for 'localhost'" in problems[0]
    assert problems[0].endswith("put a host name its certificate names in JANITOR_REGISTRY_URL")


def test_invalid_json_in_a_tag_listing(registry: Registry, make_proxy: MakeProxy) -> None:
    """A listing that is not JSON is an error naming the repository."""
    name = repo()
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("GET", "/tags/list", 200, b"{not json", {"Content-Type": "text/plain"}))

    with pytest.raises(RegistryError, match=f"invalid JSON.*{name}"):
        connect(registry, proxy.url).list_tags(name)


def test_names_outside_the_grammar_never_reach_the_registry(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """Tags, digests and repositories that are not valid names are refused before any
    request is built from them."""
    proxy = make_proxy(registry.url)
    client = connect(registry, proxy.url)

    with pytest.raises(RegistryError, match="not a valid tag"):
        client.resolve_digest("a/airflow", "../../other/airflow/manifests/v1")
    with pytest.raises(RegistryError, match="not a valid digest"):
        client.delete_manifest("a/airflow", "sha256:abc/../../x")
    with pytest.raises(RegistryError, match="not a valid repository"):
        client.list_tags("A/../b")
    assert not [p for _, p in proxy.paths if "manifests" in p or "tags" in p]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"JANITOR_REGISTRY_USERNAME": "u"}, "go together"),
        ({"JANITOR_REGISTRY_PASSWORD": "p"}, "set without JANITOR_REGISTRY_USERNAME"),
        (
            {
                "JANITOR_REGISTRY_USERNAME": "u",
                "JANITOR_REGISTRY_PASSWORD": "p",
                "JANITOR_REGISTRY_TOKEN": "t",
            },
            "exclusive",
        ),
        (
            {"JANITOR_REGISTRY_URL": "http://bot:pw@r", "JANITOR_REGISTRY_TOKEN": "t"},
            "configure them once",
        ),
    ],
)
def test_credentials_settings_must_be_consistent(environ: dict[str, str], message: str) -> None:
    """Credentials that cannot work together are refused when settings load (exit 2)."""
    base = {"JANITOR_HOUSTON_DSN": "host=h", "JANITOR_REGISTRY_URL": "http://r"}
    with pytest.raises(ConfigurationError, match=message):
        load_settings({}, base | environ)


def test_parses_www_authenticate_challenges() -> None:
    """Quoted parameters may hold commas (scopes with several actions)."""
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry",'
        'scope="repository:team/app:pull,delete"'
    )

    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry",
        "scope": "repository:team/app:pull,delete",
    }


def test_credentials_in_the_url_are_used_and_never_shown(basic_registry: Registry) -> None:
    """user:password@ in JANITOR_REGISTRY_URL authenticates, and a wrong password there is
    not echoed back in the error."""
    host = basic_registry.url.removeprefix("http://")
    good = connect(
        basic_registry, f"http://janitor:{PASSWORD}@{host}", username=None, password=None
    )
    bad = connect(
        basic_registry, f"http://janitor:oops-secret@{host}", username=None, password=None
    )

    assert good.check() == []
    problems = bad.check()
    assert problems
    assert "oops-secret" not in problems[0]


def test_a_proxy_from_the_environment_carries_every_request(
    registry: Registry, make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform that routes egress through HTTP_PROXY sees every registry request go
    through it, the hundredth as the first: the environment is read once, not forgotten."""
    name = repo()
    registry.pusher().image(name, "1.0.0")
    forward = make_proxy(registry.url)
    for variable in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTP_PROXY", forward.url)
    client = connect(registry)

    for _ in range(5):
        assert client.list_tags(name) == ["1.0.0"]

    assert forward.counts == {"GET ping": 1, "GET tags": 5}


def test_netrc_credentials_are_looked_up_once_and_sent_on_every_request(
    basic_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials an operator keeps in ~/.netrc (NETRC) still open a basic-auth registry on
    every request, while the file is looked up once per registry, not once per request."""
    name = repo()
    basic_registry.pusher().image(name, "v1")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USERNAME} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    lookups: list[str] = []
    real = http.get_netrc_auth

    def counted(url: str, raise_errors: bool = False) -> tuple[str, str] | None:
        lookups.append(url)
        return real(url, raise_errors)

    monkeypatch.setattr(http, "get_netrc_auth", counted)
    client = connect(basic_registry, username=None, password=None)

    for _ in range(5):
        assert client.list_tags(name) == ["v1"]

    assert len(lookups) == 1
