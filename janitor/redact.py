"""The one secret scrubber (README "Configuration": secrets never appear in any line).

Secrets are masked by structure: the password field of a DSN as libpq parses it, the user
info of a URL, the value of a ``password=`` keyword. Known secret values are also masked
where they stand as a whole token, and only when they are long enough that masking them
tells nothing: replacing every ``ou`` would print ``h***ston`` for ``houston`` and give the
password away.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Shorter known secrets are masked only where their structure shows them (see above).
MIN_SCRUBBED_SECRET = 8

# "scheme://" starts a URL or URI DSN; its user info runs to the last "@" before the path,
# query or end: an unencoded "@" in a password must not leave its tail visible.
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)", re.I)
# libpq's keyword=value form: a value is a single-quoted string (backslash escapes) or a
# run of non-space characters.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>(?<![?&\w])password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'?|\S+)", re.I
)
# A password in a URI DSN's query string (?password=...).
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&#\s]*)", re.I)


def _mask_authority(scheme: str, rest: str) -> str:
    # The last "@" of the whole token, not of the authority: a password with an unencoded
    # "/", "?", "#" or "@" must be masked whole. Masking too much is the safe side.
    at = rest.rfind("@")
    if at == -1:
        return scheme + _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, rest)
    user, colon, _ = rest[:at].partition(":")
    shown = f"{user}:{MASK}" if colon else user
    tail = _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, rest[at + 1 :])
    return f"{scheme}{shown}@{tail}"


def mask_text(text: str) -> str:
    """``text`` with every URL/URI-DSN password and ``password=`` value masked."""
    # Each pattern runs only where what it needs to match stands: every string of every
    # event passes here, and most (names, reasons) hold neither; the URL pattern alone costs
    # microseconds per string (README "Benchmarks"). casefold() is at least as loose as re.I.
    if "://" in text:
        text = _URL.sub(lambda m: _mask_authority(m["scheme"], m["rest"]), text)
    if "password" in text.casefold():
        text = _KEYWORD_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return text


def display_url(url: str) -> str:
    """``url`` as it may be shown in a configuration summary: the password masked, the
    user name kept (which account is configured is worth seeing)."""
    return mask_text(url)


def without_credentials(url: str) -> str:
    """``url`` without user info, query or fragment: what a client sends requests to and
    what event targets and errors name."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def display_dsn(conninfo: str) -> str:
    """A PostgreSQL DSN (URI or ``keyword=value`` form) as it may be shown, in the shape the
    operator wrote it, with every place a password can stand in masked: also a DSN that
    libpq cannot parse (an unencoded ``%`` or ``@`` in the password)."""
    return mask_text(conninfo)


def dsn_password(conninfo: str) -> str | None:
    """The password libpq reads from ``conninfo`` (None for none or an unparsable DSN)."""
    # Only a DSN's owner pays for libpq: a logs- or metrics-only run never loads it.
    import psycopg.conninfo  # noqa: PLC0415

    try:
        password = psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return None
    return str(password) if password else None


def url_password(url: str) -> str | None:
    """The password of ``url``'s user info, as an HTTP client would send it."""
    return urlsplit(url).password or None


def quoted_fragments_masked(message: str, secret_region: str) -> str:
    """A server's or parser's ``message`` (e.g. libpq: ``invalid percent-encoded token:
    "pa%ss"``) with every double-quoted fragment that overlaps ``secret_region`` masked."""

    def mask(match: re.Match[str]) -> str:
        fragment = match[1]
        if fragment and (fragment in secret_region or secret_region in fragment):
            return f'"{MASK}"'
        return match[0]

    return re.sub(r'"([^"]*)"', mask, message)


def password_region(conninfo: str) -> str:
    """Where a DSN's password stands, found by structure also when libpq cannot parse it:
    the URI user info after ``:``, a ``?password=`` value, or a ``password=`` keyword value."""
    regions: list[str] = []
    for match in _URL.finditer(conninfo):
        rest = match["rest"]
        at = rest.rfind("@")
        if at != -1:
            regions.append(rest[:at].partition(":")[2])
        regions += [m["secret"] for m in _QUERY_PASSWORD.finditer(rest)]
    regions += [m["secret"].strip("'") for m in _KEYWORD_PASSWORD.finditer(conninfo)]
    return "\n".join(r for r in regions if r)


class Scrubber:
    """Masks secrets in any string: by structure always, and the given secret values where
    they stand as whole tokens (long ones only, see the module docstring)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= MIN_SCRUBBED_SECRET}, key=len, reverse=True)
        self._known = (
            re.compile(
                r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(s) for s in known) + r")(?![A-Za-z0-9])"
            )
            if known
            else None
        )

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(MASK, text)
        return mask_text(text)
