"""Log indices past the retention window, event ``logs.index.delete`` (README "How a run
works", step 4).

Reading costs one request: ``GET /<patterns>`` (the get index API) filtered down to each
index's aliases, ``index.creation_date``, ``index.hidden`` and ``index.lifecycle.name`` (the
cat APIs are documented as meant for people, not applications). A second one,
``GET _data_stream/<patterns>``, is sent only when that listing holds hidden or dot-named
indices, the only kind that can back a data stream; a third, ``GET _alias/<names>``, only
when an index about to be deleted is the one listed index of an alias that leaves
``is_write_index`` unset, to learn whether the alias holds other indices (README "Safety
rules": the only index of such an alias is its write index).

Deleting costs one request per batch: ``DELETE /a,b,c`` with explicit names only (ES 8
refuses wildcards in deletes by default, ``action.destructive_requires_name``), as many names
as fit in Elasticsearch's 4 KB request line (``http.max_initial_line_length``). Each batch
is one independent :class:`~janitor.plan.Step`, so the runner may send them concurrently.
The whole sweep costs at most 1 + ⌈names / 4 KB⌉ + 3 requests, the version check included.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from janitor.clients.elasticsearch import (
    ApiError,
    BadRequestError,
    Elasticsearch,
    NotFoundError,
    TransportError,
    check_elasticsearch,
    describe,
    verify_elasticsearch,
)
from janitor.errors import ConfigurationError
from janitor.naming import index_name_refusal, matches, name_date_pattern
from janitor.plan import (
    ABSENT,
    DONE,
    PLANNED,
    Action,
    Result,
    Step,
    Sweeper,
    failed,
    final,
    skipped,
)

EVENT = "logs.index.delete"
T = TypeVar("T")
AgeSource = Literal["creation_date", "name"]

# Netty rejects a request line (method, target and protocol, without CRLF) longer than
# http.max_initial_line_length, 4096 bytes by default, with 400 too_long_http_line_exception.
# Counting the CRLF too keeps one byte of margin for Netty releases before 4.1.100, which
# counted the CR against the limit.
MAX_REQUEST_LINE = 4096
_LINE_END = len("\r\n")
_PROTOCOL = " HTTP/1.1"
_DELETE_OVERHEAD = len("DELETE /") + len(_PROTOCOL) + _LINE_END

_EXPAND = "open,closed"
# The get index API's "features" parameter is 8.1+: filter_path alone trims the answer on
# every 8.x (mappings included).
_LISTING_FIELDS = (
    "*.aliases",
    "*.settings.index.creation_date",
    "*.settings.index.hidden",
    "*.settings.index.lifecycle.name",
)
_PROBE_FIELDS = ("*.settings.index.creation_date",)
_PROBE_QUERY = (
    "/_settings?allow_no_indices=true&expand_wildcards=open,closed"
    "&filter_path=*.settings.index.creation_date&ignore_unavailable=true"
)
_PROBE_OVERHEAD = len("GET /") + len(_PROBE_QUERY) + len(_PROTOCOL) + _LINE_END
_ALIAS_OVERHEAD = len("GET /_alias/?expand_wildcards=all") + len(_PROTOCOL) + _LINE_END

# No log index predates the Unix epoch (index.creation_date counts from it): a name date
# before it is a misreading, never a reason to delete.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Index:
    name: str
    creation_date: str | None
    hidden: bool
    lifecycle: str | None = None
    """The ILM policy managing it (``index.lifecycle.name``)."""
    aliases: Mapping[str, bool | None] = field(default_factory=dict)
    """Each alias on it, with its ``is_write_index`` (None: not set)."""


@dataclass(frozen=True)
class _Membership:
    """The data stream a backing index belongs to, whether it is the write index, and
    whether the stream is a system one (Elasticsearch's own)."""

    stream: str
    write: bool
    system: bool = False


def plan_logs(
    es: Elasticsearch,
    *,
    patterns: Sequence[str],
    retention_days: int,
    age_source: AgeSource,
    timestring: str,
    now: datetime,
) -> list[Step]:
    """The log indices past the window, one step per DELETE batch, plus settled skips.

    An index is considered when its own name matches a pattern, or when it backs a data
    stream whose name does; anything reached otherwise (through an alias, say) is left
    alone and unreported. Of those past the window, these are ``skipped`` (README "Safety
    rules"): hidden and dot-named indices that back no matched stream, every stream's write
    index, backing indices of a system stream, the write index of an alias, and indices an
    ILM policy manages; so is any index whose name holds no date (or one before 1970) when
    ages come from names. An index whose creation date cannot be read is ``failed`` on its
    own; the others go on.
    """
    if now.utcoffset() != timedelta(0):
        raise ValueError(
            "now must be timezone-aware UTC (one now per run, README 'How a run works')"
        )
    date_in_name = name_date_pattern(timestring) if age_source == "name" else None

    indices = _list_indices(es, patterns)
    backing = (
        _backing_indices(es, patterns)
        if any(i.hidden or i.name.startswith(".") for i in indices)
        else {}
    )
    cutoff = now - timedelta(days=retention_days)
    steps: list[Step] = []
    expired: list[tuple[_Index, Action]] = []
    for index in indices:
        membership = backing.get(index.name)
        if membership is None and not matches(index.name, patterns):
            continue
        refusal = index_name_refusal(index.name)
        if refusal is not None:
            # An answer that would put a wildcard or a second name into the DELETE line.
            error = f"Elasticsearch listed {index.name!r}, which {refusal}; not touched"
            steps.append(final(Action(EVENT, index.name, failed(error))))
            continue
        created = (
            _created_from_name(index.name, date_in_name, timestring)
            if date_in_name is not None
            else _created_from_settings(index)
        )
        protected = _protection(index, membership)
        if isinstance(created, Result):
            unread = skipped(protected) if protected else created
            steps.append(final(Action(EVENT, index.name, unread)))
            continue
        if created > cutoff:
            continue
        fields = {"age_days": (now - created) // timedelta(days=1)}
        action = Action(EVENT, index.name, PLANNED, fields=fields)
        if protected:
            steps.append(final(replace(action, planned=skipped(protected))))
        else:
            expired.append((index, action))
    writes = _alias_write_indices(es, indices, [index for index, _ in expired])
    deleted: list[Action] = []
    for index, action in expired:
        alias = writes.get(index.name)
        if alias is None:
            deleted.append(action)
        else:
            steps.append(final(replace(action, planned=skipped(f"write index of alias [{alias}]"))))
    for batch in _batches(deleted, lambda a: a.target, _DELETE_OVERHEAD):
        steps.append(_delete_step(es, tuple(batch)))
    return steps


def _protection(index: _Index, membership: _Membership | None) -> str | None:
    """Why the safety rules (README) forbid deleting ``index``, or None. The alias rule is
    :func:`_alias_write_indices`: it may need a request, sent for expired indices only."""
    if membership is not None:
        if membership.write:
            return f"write index of data stream [{membership.stream}]"
        if membership.system:
            return f"backing index of system data stream [{membership.stream}]"
    elif index.name.startswith("."):
        return "system or hidden index (name starts with '.')"
    elif index.hidden:
        return "hidden index (index.hidden: true)"
    if index.lifecycle is not None:
        return f"managed by ILM policy [{index.lifecycle}]"
    return None


def _alias_write_indices(
    es: Elasticsearch, listed: Sequence[_Index], candidates: Sequence[_Index]
) -> dict[str, str]:
    """The ``candidates`` that are the write index of an alias, each with that alias: one
    whose alias entry has ``is_write_index: true``, or the only index of an alias that does
    not set it (README "Safety rules").

    An alias left unset on exactly one listed index may hold indices the listing did not
    reach: one ``GET _alias`` counts its indices. An index the janitor may not see counts
    as none, so a doubt keeps the index.
    """
    holders = Counter(alias for index in listed for alias in index.aliases)
    writes: dict[str, str] = {}
    unsure: dict[str, str] = {}
    for index in candidates:
        for alias, write in sorted(index.aliases.items()):
            if write is True:
                writes.setdefault(index.name, alias)
            elif write is None and holders[alias] == 1:
                unsure[alias] = index.name
    if unsure:
        sizes = _alias_sizes(es, sorted(unsure))
        for alias, name in sorted(unsure.items()):
            if sizes[alias] <= 1:
                writes.setdefault(name, alias)
    return writes


def _alias_sizes(es: Elasticsearch, aliases: Sequence[str]) -> Counter[str]:
    """How many indices hold each of ``aliases``, in one request: ``GET _alias/<names>``, or
    ``GET _alias`` (every alias) when the names overflow one request line."""
    fits = len(_batches(aliases, str, _ALIAS_OVERHEAD)) == 1
    try:
        body: Any = es.indices.get_alias(
            name=list(aliases) if fits else None, expand_wildcards="all"
        ).body
    except NotFoundError as error:
        # An alias removed since the listing: its 404 still lists the indices of the others.
        body = error.body
    entries = body.values() if isinstance(body, Mapping) else ()
    return Counter(
        alias
        for entry in entries
        if isinstance(entry, Mapping) and isinstance(entry.get("aliases"), Mapping)
        for alias in entry["aliases"]
    )


def _created_from_settings(index: _Index) -> datetime | Result:
    raw = index.creation_date
    if raw is None:
        return skipped("index settings show no index.creation_date")
    # Elasticsearch sends epoch milliseconds as a string of digits; a reading that is not
    # one (a proxy's rewrite, a fork) fails this index alone. 15 digits reach year 9999.
    if re.fullmatch("[0-9]{1,15}", raw):
        try:
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        except (ValueError, OverflowError, OSError):
            pass
    return failed(f"index [{index.name}]: index.creation_date {raw!r} is not epoch milliseconds")


def _created_from_name(name: str, pattern: re.Pattern[str], timestring: str) -> datetime | Result:
    """The start of the period the name's date stands for (Curator's reading), in UTC.

    The rightmost date wins: the date is the name's suffix, and digits of a release name
    just before it must not be taken as its start (``quasar-1234.26.11.01`` with ``%y``).
    """
    for start in range(len(name), -1, -1):
        match = pattern.match(name, start)
        if match is None:
            continue
        try:
            created = datetime.strptime(match.group(0), timestring).replace(tzinfo=UTC)
        except ValueError:
            continue
        if created < _EARLIEST:
            return skipped(f"date {match.group(0)!r} in the index name is before 1970")
        return created
    return skipped(f"no date matching {timestring!r} in the index name")


def _list_indices(es: Elasticsearch, patterns: Sequence[str]) -> list[_Index]:
    # Wildcards expand to open and closed indices but not hidden ones, except that a pattern
    # starting with "." also matches hidden names starting with "." (Elasticsearch's rule);
    # a data stream matched by name brings in its (hidden) backing indices.
    # ignore_unavailable: a pattern without "*" naming no index is not an error.
    body = es.indices.get(
        index=list(patterns),
        expand_wildcards=_EXPAND,
        ignore_unavailable=True,
        allow_no_indices=True,
        filter_path=list(_LISTING_FIELDS),
    ).body
    found = []
    for name, entry in sorted(body.items()):
        settings = entry.get("settings", {}).get("index", {})
        created = settings.get("creation_date")
        policy = settings.get("lifecycle", {}).get("name")
        aliases = entry.get("aliases", {})
        found.append(
            _Index(
                name=name,
                creation_date=str(created) if created is not None else None,
                hidden=str(settings.get("hidden", "false")).lower() == "true",
                lifecycle=str(policy) if policy else None,
                aliases={
                    alias: meta.get("is_write_index") if isinstance(meta, Mapping) else None
                    for alias, meta in aliases.items()
                },
            )
        )
    return found


def _backing_indices(es: Elasticsearch, patterns: Sequence[str]) -> dict[str, _Membership]:
    """Backing indices of the data streams whose names match ``patterns``."""
    # GET _data_stream answers 404 for a name without "*" that is no data stream, and has no
    # ignore_unavailable: every pattern is sent as a wildcard and matched exactly below.
    names = [p if "*" in p else f"{p}*" for p in patterns]
    body = es.indices.get_data_stream(
        name=names,
        filter_path=[
            "data_streams.name",
            "data_streams.system",
            "data_streams.indices.index_name",
        ],
    ).body
    backing: dict[str, _Membership] = {}
    for stream in body.get("data_streams", []):
        if not matches(stream["name"], patterns):
            continue
        members = [i["index_name"] for i in stream.get("indices", [])]
        system = stream.get("system") is True
        # The API lists backing indices oldest first; the last one is the write index.
        for position, name in enumerate(members):
            write = position == len(members) - 1
            backing[name] = _Membership(stream["name"], write=write, system=system)
    return backing


def _batches(items: Sequence[T], name: Callable[[T], str], overhead: int) -> list[list[T]]:
    """``items`` in order, cut where the comma-joined names would overflow the request line.

    Names are measured as the client sends them: percent-encoded, commas kept.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    length = overhead
    for item in items:
        size = len(quote(name(item), safe=",*"))
        if current and length + 1 + size > MAX_REQUEST_LINE:
            batches.append(current)
            current, length = [], overhead
        length += size + (1 if current else 0)
        current.append(item)
    if current:
        batches.append(current)
    return batches


def _delete_step(es: Elasticsearch, actions: tuple[Action, ...]) -> Step:
    names = [a.target for a in actions]

    def run() -> list[Result]:
        settled = _delete(es, names, probe=True)
        return [settled[n] for n in names]

    return Step(actions, run)


def _delete(es: Elasticsearch, names: list[str], *, probe: bool) -> dict[str, Result]:
    """Delete ``names`` in one request, and settle every name whatever happens.

    404 (some index vanished meanwhile, or a retried DELETE already went through): one probe
    tells which still exist; those are deleted again, the rest are ``absent``. 400 (an index
    refuses: a snapshot in progress, a name turned alias): the indices the error names fail
    with it and the rest are sent again in one request; an error naming none of them halves
    the batch until the refusing index stands alone. Either way it does not block the
    others. Anything else (auth, 429/5xx after the retries, connection) fails the whole
    batch: splitting would only repeat it.
    """
    if not names:
        return {}
    try:
        es.indices.delete(index=names)
    except NotFoundError as error:
        return _settle_missing(es, names, error, probe=probe)
    except BadRequestError as error:
        return _settle_refused(es, names, error, probe=probe)
    except (ApiError, TransportError) as error:
        return dict.fromkeys(names, failed(describe(error)))
    return dict.fromkeys(names, DONE)


def _settle_refused(
    es: Elasticsearch, names: list[str], error: BadRequestError, *, probe: bool
) -> dict[str, Result]:
    """After a 400: the indices it names fail with it, the others go again in one request;
    when it names none of them, the batch is halved until the refusing one stands alone."""
    reason = describe(error)
    if len(names) == 1:
        return {names[0]: failed(reason)}
    # Elasticsearch names what refused in brackets: "[name]", or "[name/uuid]" for indices a
    # snapshot holds.
    named = [n for n in names if f"[{n}]" in reason or f"[{n}/" in reason]
    if named and len(named) < len(names):
        rest = [n for n in names if n not in named]
        return dict.fromkeys(named, failed(reason)) | _delete(es, rest, probe=probe)
    half = len(names) // 2
    return _delete(es, names[:half], probe=probe) | _delete(es, names[half:], probe=probe)


def _settle_missing(
    es: Elasticsearch, names: list[str], error: NotFoundError, *, probe: bool
) -> dict[str, Result]:
    """After a 404 (which names only the first missing index): who is gone, who is left."""
    if probe:
        try:
            existing = _existing(es, names)
        except (ApiError, TransportError) as probe_error:
            return dict.fromkeys(names, failed(describe(probe_error)))
        gone = {n: ABSENT for n in names if n not in existing}
        return gone | _delete(es, [n for n in names if n in existing], probe=False)
    # Vanished between the probe and this DELETE: settle the named one and go on.
    missing = _missing_index(error)
    if missing not in names:
        return dict.fromkeys(names, failed(describe(error)))
    rest = [n for n in names if n != missing]
    return {missing: ABSENT} | _delete(es, rest, probe=False)


def _existing(es: Elasticsearch, names: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _batches(names, str, _PROBE_OVERHEAD):
        body = es.indices.get_settings(
            index=chunk,
            allow_no_indices=True,
            expand_wildcards=_EXPAND,
            filter_path=list(_PROBE_FIELDS),
            ignore_unavailable=True,
        ).body
        found.update(body)
    return found


def _missing_index(error: NotFoundError) -> str | None:
    body: Mapping[str, Any] = error.body if isinstance(error.body, Mapping) else {}
    cause = body.get("error")
    if isinstance(cause, Mapping) and cause.get("type") == "index_not_found_exception":
        index = cause.get("index") or cause.get("resource.id")
        return str(index) if index is not None else None
    return None


@dataclass(frozen=True)
class LogRetention:
    """What the logs sweeper deletes: indices matching ``patterns`` older than
    ``retention_days``, their age read as ``age_source`` says (README "Log indices")."""

    patterns: tuple[str, ...]
    retention_days: int
    age_source: AgeSource = "creation_date"
    timestring: str = "%Y.%m.%d"


def sweeper(
    connect: Callable[[], Elasticsearch], url: str, retention: LogRetention, now: datetime
) -> Sweeper:
    """The logs sweeper for the Elasticsearch at ``url``: ``plan`` verifies the server
    (ConfigurationError, exit 2, for one that is not a supported Elasticsearch) and turns
    a server it cannot read into one failed event."""
    target = ",".join(retention.patterns)

    def plan() -> list[Step]:
        es = connect()
        try:
            verify_elasticsearch(es, url)
            return plan_logs(
                es,
                patterns=retention.patterns,
                retention_days=retention.retention_days,
                age_source=retention.age_source,
                timestring=retention.timestring,
                now=now,
            )
        except (ApiError, TransportError) as exc:
            return [final(Action(EVENT, target, failed(describe(exc))))]

    def problems() -> list[str]:
        es = connect()
        try:
            verify_elasticsearch(es, url)
        except ConfigurationError as exc:
            return [str(exc)]
        except (ApiError, TransportError) as exc:
            return [describe(exc)]
        return check_elasticsearch(es, retention.patterns)

    return Sweeper("logs", EVENT, plan, problems)
