"""The name rules that decide what the janitor may touch (README "Safety rules").

One module for every name the janitor derives or accepts: release names read from the
Houston table, the templates that turn a release name into a database, role or registry
repository name, and the limits those names must fit. Every rule is a full match: ``$`` in
a Python regex also accepts a final newline, so a row ``live-one\\n`` would pass a
``re.match(...$)`` check and name another deployment's resources.

Sources: README "Safety rules" (release names), PostgreSQL "Identifiers and Key Words"
(NAMEDATALEN - 1 = 63 bytes), the distribution spec's repository grammar (docs/registry.md).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

# README "Safety rules": ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$, applied with fullmatch.
RELEASE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
TEMPLATE_FIELDS = frozenset({"release", "release_snake"})
# PostgreSQL truncates longer identifiers silently, so a longer name could designate
# another database or role (NAMEDATALEN - 1).
MAX_IDENTIFIER_BYTES = 63
# The distribution spec's repository name grammar (reference/regexp.go) and its length cap.
REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
MAX_REPOSITORY_LENGTH = 255
# What a template is checked with at load time: a release name as Astronomer makes them.
SAMPLE_RELEASE = "sample-release-1234"
# A release name in its {release_snake} form: release names hold no "_", so each "_" of it
# stands for a "-".
SNAKE_RELEASE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_]*[a-z0-9])?")
_FIELD_GRAMMAR = {"release": RELEASE_NAME, "release_snake": SNAKE_RELEASE_NAME}


def release_name_refusal(name: str | None) -> str | None:
    """Why ``name`` is not a release name the janitor may act on, or None when it is."""
    if not name:
        return "release name is empty"
    if RELEASE_NAME.fullmatch(name) is None:
        return f"invalid release name {name!r}: names must match ^{RELEASE_NAME.pattern}$"
    return None


def check_template(template: str) -> str:
    """``template`` when it uses only ``{release}`` / ``{release_snake}``, at least one of
    them, with no format spec or conversion; ValueError naming the problem otherwise."""
    try:
        fields = [
            (name, spec, conv)
            for _, name, spec, conv in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc})") from exc
    if not fields:
        raise ValueError("must contain {release} or {release_snake}")
    for name, spec, conv in fields:
        if name not in TEMPLATE_FIELDS or spec or conv:
            raise ValueError(f"may only use {{release}} and {{release_snake}}, found {{{name}}}")
    return template


def render(template: str, release: str) -> str:
    """``template`` applied to ``release`` (``release_snake``: ``-`` replaced by ``_``)."""
    return template.format(release=release, release_snake=release.replace("-", "_"))


@functools.cache
def template_pattern(template: str) -> re.Pattern[str]:
    """The full-match regex of the names ``template`` gives for valid release names: the
    first ``{release}`` and the first ``{release_snake}`` are named groups, a field used
    again must repeat what its first use matched."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(
                f"(?P={name})" if name in seen else f"(?P<{name}>{_FIELD_GRAMMAR[name].pattern})"
            )
            seen.add(name)
    return re.compile("".join(parts))


def release_from(template: str, name: str) -> str | None:
    """The release name whose ``template`` gives exactly ``name``, or None when no valid
    release name does (README "Orphans: janitor audit").

    A ``{release_snake}`` part is read back with each ``_`` as ``-``. What the pattern
    matched is rendered again and must give ``name`` in full: a template using both fields
    names one release only when both parts agree.
    """
    found = template_pattern(template).fullmatch(name)
    if found is None:
        return None
    fields = found.groupdict()
    plain, snake = fields.get("release"), fields.get("release_snake")
    release = plain if plain is not None else (snake or "").replace("_", "-")
    if release_name_refusal(release) is not None or render(template, release) != name:
        return None
    return release


def identifier_refusal(name: str) -> str | None:
    """Why ``name`` cannot be a PostgreSQL database or role name the janitor drops."""
    if not name or "\x00" in name:
        return "is empty or holds a NUL byte"
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        return f"is longer than {MAX_IDENTIFIER_BYTES} bytes; PostgreSQL would truncate it"
    return None


def repository_refusal(name: str) -> str | None:
    """Why ``name`` is not a valid registry repository name, or None."""
    if len(name) > MAX_REPOSITORY_LENGTH:
        return f"is longer than {MAX_REPOSITORY_LENGTH} characters"
    if REPOSITORY.fullmatch(name) is None:
        return "is not a valid repository name (distribution spec grammar)"
    return None


@dataclass(frozen=True)
class Templates:
    """How a release name becomes the names of its resources.

    ``repository`` is None when no registry is swept: its names then need not be valid.
    """

    database: str
    roles: tuple[str, ...]
    repository: str | None = None

    def database_name(self, release: str) -> str:
        return render(self.database, release)

    def role_names(self, release: str) -> list[str]:
        return list(dict.fromkeys(render(t, release) for t in self.roles))

    def repository_name(self, release: str) -> str:
        if self.repository is None:
            raise ValueError("no repository template: the registry is not swept")
        return render(self.repository, release)

    def refusal(self, release: str | None) -> str | None:
        """Why the janitor may not act on the deployment ``release`` (an invalid release
        name, or a resource name that cannot be built from it), or None.

        A refused deployment is skipped and keeps its row (README "How a run works",
        step 3); the rest of the run goes on.
        """
        reason = release_name_refusal(release)
        if reason is not None or release is None:
            return reason
        names = [("database", self.database_name(release), identifier_refusal)]
        names += [("role", role, identifier_refusal) for role in self.role_names(release)]
        if self.repository is not None:
            names.append(("repository", self.repository_name(release), repository_refusal))
        for kind, name, rule in names:
            problem = rule(name)
            if problem is not None:
                return f"{kind} name {name!r} built for release {release!r} {problem}"
        return None


# --- log index patterns and names (README "Log indices") -----------------------------------

# Elasticsearch's own rules for index names (indices.create docs, "Path parameters").
INDEX_NAME_FORBIDDEN = frozenset('\\/*?"<>| ,#:')
# Names made only of these hold nothing forbidden: most listed names, checked without a
# character-by-character walk.
_PLAIN_INDEX_NAME = re.compile(r"[a-z0-9._+-]+")
MAX_INDEX_NAME_BYTES = 255
DATA_STREAM_BACKING_PREFIX = ".ds-"


def index_pattern_refusal(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a log index pattern, or None (README "Configuration").

    A pattern is an index or data stream name in which ``*`` is a wildcard. It may start
    with ``.``: it can name a hidden data stream (``.logs-airflow``), whose old backing
    indices go while every other hidden or system index stays protected (README "Safety
    rules"). Refused: nothing but wildcards (every index), a cross-cluster ``remote:``
    prefix, ``-``/``_``/``+`` prefixes (exclusions and ``_all`` change what a listing means),
    a list separator, space or other character no index name may hold (it would be sent as
    something else), and patterns that could only match nothing or everything hidden:
    capitals (names are lowercase), ``.ds-`` (a backing index is reached through its data
    stream's name, never its own), a dot and wildcards only.
    """
    name_problem = index_name_refusal(pattern.replace("*", "x"))
    rules = (
        (pattern.strip("*") == "", "would address every index"),
        (":" in pattern, "names a remote cluster (cross-cluster patterns are not swept)"),
        (name_problem is not None, f"is not an index name or pattern: it {name_problem}"),
        (
            pattern != pattern.lower(),
            "has capitals: index and data stream names are lowercase, it would match nothing",
        ),
        (
            pattern.startswith(DATA_STREAM_BACKING_PREFIX),
            "names backing indices (.ds-…) directly: name their data stream instead",
        ),
        (
            pattern.startswith(".") and pattern.strip("*") == ".",
            "would address every hidden data stream and system index",
        ),
    )
    return next((reason for refused, reason in rules if refused), None)


def index_name_refusal(name: str) -> str | None:
    """Why ``name``, as an Elasticsearch answer gives it, must not go into a DELETE."""
    if name in ("", ".", ".."):
        return f"is {name!r}, which names no index"
    if name.startswith(("-", "_", "+")):
        return f"starts with {name[0]!r}, which no index name may"
    forbidden = (
        None
        if _PLAIN_INDEX_NAME.fullmatch(name)
        else next((c for c in name if c in INDEX_NAME_FORBIDDEN or ord(c) < 32), None)
    )
    if forbidden is not None:
        return f"holds {forbidden!r}, which no index name may hold"
    if len(name.encode()) > MAX_INDEX_NAME_BYTES:
        return f"is longer than {MAX_INDEX_NAME_BYTES} bytes"
    return None


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Elasticsearch's wildcard match (``*`` only), in full; never against a ``.ds-`` name:
    a backing index is reached only through its data stream's name (README "Safety rules")."""
    return matching_pattern(name, patterns) is not None


def matching_pattern(name: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` that :func:`matches` ``name``, or None."""
    if name.startswith(DATA_STREAM_BACKING_PREFIX):
        return None
    return next((p for p in patterns if _wildcard(p).fullmatch(name)), None)


# How Elasticsearch names a data stream's backing index: .ds-<stream>-<yyyy.MM.dd>-<generation>
# (7.11 and later), .ds-<stream>-<generation> before.
_BACKING_INDEX = re.compile(r"\.ds-(?P<stream>.+?)(?:-[0-9]{4}\.[0-9]{2}\.[0-9]{2})?-[0-9]{6,}")


def reaching_pattern(index: str, patterns: Iterable[str]) -> str | None:
    """The pattern through which ``index`` was reached: the one matching its name or, for a
    backing index, its data stream's name as the backing index's name tells it. For the
    console view only: the sweeper knows the stream from Elasticsearch itself."""
    backing = _BACKING_INDEX.fullmatch(index)
    return matching_pattern(backing["stream"] if backing else index, patterns)


# A few configured patterns, matched against every listed index (100,000 at fleet scale).
@functools.lru_cache(maxsize=64)
def _wildcard(pattern: str) -> re.Pattern[str]:
    # DOTALL: Elasticsearch's "*" also spans a newline, so a name holding one is listed and
    # must be seen here too, to be refused by name (index_name_refusal) and not passed over.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


# strftime directives a name date may use, as the digits they stand for ([0-9], not \d,
# which also matches non-ASCII digits).
DATE_DIRECTIVES = {
    "Y": "[0-9]{4}",
    "y": "[0-9]{2}",
    "m": "[0-9]{2}",
    "d": "[0-9]{2}",
    "H": "[0-9]{2}",
    "M": "[0-9]{2}",
    "S": "[0-9]{2}",
    "j": "[0-9]{3}",
    "%": "%",
}
# A name date must be a calendar day: strptime fills in 1900-01-01 for what the timestring
# leaves out, which made every index look 46,000 days old.
_YEARS = frozenset({"Y", "y"})
_DAYS = (frozenset({"m", "d"}), frozenset({"j"}))


def name_date_pattern(timestring: str) -> re.Pattern[str]:
    """The regex finding ``timestring``'s date in an index name, as Curator's ``timestring``.

    Raises ValueError unless ``timestring`` names one calendar day: a year (``%Y`` or
    ``%y``) and a day (``%m`` and ``%d``, or ``%j``), each directive once; ``%H %M %S``
    may be added.
    """
    parts: list[str] = []
    used: list[str] = []
    i = 0
    while i < len(timestring):
        char = timestring[i]
        if char != "%":
            parts.append(re.escape(char))
            i += 1
            continue
        directive = timestring[i + 1 : i + 2]
        if directive not in DATE_DIRECTIVES:
            supported = " ".join("%" + d for d in DATE_DIRECTIVES)
            raise ValueError(f"unsupported directive %{directive} (supported: {supported})")
        if directive in used and directive != "%":
            # strptime would raise re.error ("redefinition of group name") mid-run.
            raise ValueError(f"%{directive} appears twice")
        used.append(directive)
        parts.append(DATE_DIRECTIVES[directive])
        i += 2
    directives = frozenset(used)
    if len(directives & _YEARS) != 1 or directives & {"m", "d", "j"} not in _DAYS:
        raise ValueError("must name a calendar day: a year (%Y or %y) and a day (%m and %d, or %j)")
    return re.compile("".join(parts))


# --- registry tags and digests (distribution spec, docs/registry.md) -----------------------

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+")


def valid_repository(name: str) -> bool:
    return repository_refusal(name) is None


def valid_tag(tag: str) -> bool:
    return TAG.fullmatch(tag) is not None


def valid_digest(digest: str) -> bool:
    return DIGEST.fullmatch(digest) is not None
