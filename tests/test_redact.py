"""Secrets are masked by structure, never by search-and-replace of short strings (SPEC.md
"Configuration": secrets never appear in any log line, error message or run.started)."""

from __future__ import annotations

import pytest

from janitor.redact import Scrubber, display_dsn, display_url, password_region
from tests.conftest import Houston, janitor

DISPLAYED = [
    ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:p@ss@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:pa%ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://h/db?user=u&password=secret", "postgresql://h/db?user=u&password=***"),
    ("host=h password='a b' user=u", "host=h password=*** user=u"),
    ("host=h password = 'it\\'s' user=u", "host=h password = *** user=u"),
    ("host=h password=secret", "host=h password=***"),
    ("host=h user=u", "host=h user=u"),
]


@pytest.mark.parametrize(("dsn", "shown"), DISPLAYED)
def test_a_dsn_is_shown_with_its_password_masked_whatever_it_holds(dsn: str, shown: str) -> None:
    """URI and keyword DSNs lose their whole password, also with an unencoded @, % or /."""
    assert display_dsn(dsn) == shown


def test_a_url_is_shown_with_its_user_info_password_masked() -> None:
    """A registry URL keeps its user name and loses the password, whole."""
    assert display_url("https://bot:t@k@en@registry:5000/") == "https://bot:***@registry:5000/"
    assert display_url("https://registry:5000/v2/") == "https://registry:5000/v2/"


def test_a_short_secret_is_never_searched_for_in_ordinary_words() -> None:
    """A password "ou" must not turn "houston" into "h***ston" and so give itself away."""
    scrub = Scrubber(["ou"])
    assert scrub("database houston: could not connect") == "database houston: could not connect"


def test_a_long_secret_is_masked_where_it_stands_as_a_whole_token() -> None:
    """A token that leaks into a server's message is masked; a longer word holding it is not
    rewritten into a hint."""
    token = "eyJhbGciOiJSUzI1NiJ9"
    scrub = Scrubber([token])
    assert scrub(f"registry said: bad token {token}.") == "registry said: bad token ***."
    assert scrub(f"x{token}y") == f"x{token}y"


def test_the_password_region_is_found_in_a_dsn_libpq_cannot_parse() -> None:
    """An unparsable DSN still tells where its password stands, so an error can hide it."""
    assert password_region("postgresql://u:pa%ss@h/db") == "pa%ss"
    assert password_region("host=h password='x y") == "x y"


def test_a_percent_in_a_uri_password_is_not_echoed_by_the_configuration_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """libpq quotes the token it cannot decode, the password itself: the error masks it."""
    run = janitor(["run"], {"JANITOR_HOUSTON_DSN": "postgresql://janitor:pa%ss@127.0.0.1/h"})

    assert run.code == 2
    err = capsys.readouterr().err
    assert "JANITOR_HOUSTON_DSN" in err
    assert "pa%ss" not in err
    assert "%ss" not in err


def test_an_unencoded_at_in_a_dsn_password_is_refused_without_showing_its_tail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """libpq would read `p@ss@host` as password `p` and host `ss@host`: a configuration error
    that says to percent-encode, and shows no part of the password."""
    run = janitor(["run"], {"JANITOR_HOUSTON_DSN": "postgresql://janitor:pw@x9q@127.0.0.1/h"})

    assert run.code == 2
    err = capsys.readouterr().err
    assert "%40" in err
    assert "x9q" not in err
    assert "pw@" not in err


def test_an_unencoded_at_in_a_url_password_is_masked_in_run_started(
    houston: Houston, env: dict[str, str]
) -> None:
    """An Elasticsearch URL whose password holds an `@` shows no part of it in run.started."""
    env["JANITOR_ELASTICSEARCH_URL"] = "http://elastic:pw@x9q@127.0.0.1:1"
    env["JANITOR_ONLY"] = "databases"

    run = janitor(["run"], env)

    started = str(run.events[0])
    assert "x9q" not in started
    assert "elastic:***@127.0.0.1:1" in started


def test_a_short_password_does_not_mask_the_houston_database_name(
    houston: Houston, env: dict[str, str]
) -> None:
    """A two-letter password found inside the database name is not masked there: the name is
    shown whole, and the password appears nowhere on its own."""
    env["JANITOR_HOUSTON_DSN"] = f"host=127.0.0.1 user=postgres password=ou dbname={houston.dbname}"

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    printed = str(run.events)
    assert houston.dbname in printed
    assert "password=ou" not in printed
