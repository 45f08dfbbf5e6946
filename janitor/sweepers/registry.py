"""Registry sweeper: every tag of each expired deployment's repository (README "How a run
works", step 3).

Planning does every read: one tag listing per repository and one ``HEAD`` per tag (a ``GET``
where a proxy drops the digest header), all on the shared executor. A listed tag whose
manifest the registry does not know is read once more in a second listing of its
repository: still listed, it is a dangling tag and ``failed`` (README "Registry answers").
Executing deletes each distinct digest once: distribution removes every tag pointing to a
manifest when the manifest is deleted, so tags sharing a digest cost one request and are all
reported ``done``. The repository name comes only from the
configured template and a validated release name; tags and digests the registry answers
are checked against the spec's grammar before they go into a URL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from typing import TypeVar

from janitor.clients.registry import RegistryClient, RegistryError
from janitor.naming import SAMPLE_RELEASE, Templates, valid_tag
from janitor.plan import (
    ABSENT,
    DONE,
    PLANNED,
    Action,
    Counts,
    Deployment,
    DeploymentPlan,
    DeploymentSweeper,
    Probe,
    Result,
    Share,
    Step,
    failed,
    final,
)

EVENT = "registry.tag.delete"
GARBAGE_COLLECT_DUE = (
    "registry manifests were deleted: their storage is freed only by the registry's "
    "offline `registry garbage-collect --delete-untagged` (see docs/registry.md)"
)

T = TypeVar("T")


def sweeper(
    connect: Callable[[], RegistryClient],
    templates: Templates,
    *,
    concurrency: int,
    stack: ExitStack,
) -> DeploymentSweeper:
    """The registry sweeper; the client ``connect`` builds, and the executor of its
    requests, are closed with ``stack``."""

    def plan(deployments: Sequence[Deployment]) -> DeploymentPlan:
        if not deployments:
            return DeploymentPlan({})
        client = connect()
        stack.callback(client.close)
        # Its own pool: deployment workers wait on these requests, so they must not share one.
        executor = stack.enter_context(ThreadPoolExecutor(concurrency, "registry"))
        return DeploymentPlan(plan_registry(client, deployments, templates, executor))

    def problems(_: Sequence[Deployment]) -> list[str]:
        client = connect()
        try:
            return client.check(templates.repository_name(SAMPLE_RELEASE))
        finally:
            client.close()

    return DeploymentSweeper("registry", EVENT, plan, problems, notes=_notes)


def garbage_collect_due(counts: Counts) -> bool:
    """Whether ``run.finished`` should say a registry garbage-collect is due: any manifest
    deleted in this run still holds its blobs until then."""
    return counts.get(EVENT, {}).get("done", 0) > 0


def _notes(counts: Counts) -> dict[str, str]:
    return {"registry_garbage_collect": GARBAGE_COLLECT_DUE} if garbage_collect_due(counts) else {}


def plan_registry(
    client: RegistryClient,
    deployments: Sequence[Deployment],
    templates: Templates,
    executor: Executor,
) -> dict[str, Share]:
    """Steps per ``Deployment.id`` (deployments whose names ``templates`` accepts). Raises
    ConfigurationError (nothing changed) when the URL is not a registry."""
    repositories = {d.id: templates.repository_name(d.release_name) for d in deployments}
    if not deployments:
        return {}
    try:
        client.ping()
    except RegistryError as exc:
        # One clear failure per deployment instead of retrying every repository against a
        # registry that is down or refuses the credentials.
        return {
            d.id: _unswept(client, d, repositories[d.id], f"cannot use the registry: {exc}")
            for d in deployments
        }
    listings = _gather(
        executor, [partial(client.list_tags, repositories[d.id]) for d in deployments]
    )
    lookups: list[tuple[str, str]] = []
    for d, listing in zip(deployments, listings, strict=True):
        if isinstance(listing, list):
            lookups += [(repositories[d.id], tag) for tag in sorted(set(listing)) if valid_tag(tag)]
    digests = dict(
        zip(
            lookups,
            _gather(executor, [partial(client.resolve_digest, r, t) for r, t in lookups]),
            strict=True,
        )
    )
    # A listed tag without a manifest: gone meanwhile, or dangling if a new listing still
    # shows it. Only repositories with such a tag are listed again.
    manifestless = sorted({r for (r, _), digest in digests.items() if digest is None})
    relisted = dict(
        zip(
            manifestless,
            _gather(executor, [partial(client.list_tags, r) for r in manifestless]),
            strict=True,
        )
    )
    works: dict[str, Share] = {}
    for d, listing in zip(deployments, listings, strict=True):
        repository = repositories[d.id]
        if isinstance(listing, RegistryError):
            works[d.id] = _unswept(client, d, repository, f"cannot list {repository}: {listing}")
        elif listing is None:
            unknown = Action(
                EVENT, repository, Result("absent", reason="repository unknown"), d.release_name
            )
            works[d.id] = Share((final(unknown),), (_remaining(client, repository, None),))
        else:
            works[d.id] = _work(
                client,
                d,
                repository,
                tags=sorted(set(listing)),
                digests=digests,
                relisted=relisted.get(repository),
                executor=executor,
            )
    return works


def _work(
    client: RegistryClient,
    deployment: Deployment,
    repository: str,
    *,
    tags: list[str],
    digests: Mapping[tuple[str, str], str | RegistryError | None],
    relisted: list[str] | RegistryError | None,
    executor: Executor,
) -> Share:
    planned: list[Action] = []
    settled: list[Step] = []
    problems: list[str] = []
    for tag in tags:
        target = f"{repository}:{tag}"
        if not valid_tag(tag):
            error = f"registry lists {tag!r} in {repository}, not a valid tag name; not touched"
            problems.append(error)
            settled.append(final(_tag_action(deployment, target, None, failed(error))))
            continue
        digest = digests[(repository, tag)]
        if isinstance(digest, RegistryError):
            error = f"cannot resolve {target}: {digest}"
            problems.append(error)
            settled.append(final(_tag_action(deployment, target, None, failed(error))))
        elif digest is None:
            outcome = _unknown_manifest(repository, tag, relisted)
            if outcome.error is not None:
                problems.append(outcome.error)
            settled.append(final(_tag_action(deployment, target, None, outcome)))
        else:
            planned.append(_tag_action(deployment, target, digest, PLANNED))
    steps = tuple(settled)
    if planned:
        actions = tuple(planned)
        steps = (Step(actions, lambda: _delete(client, repository, actions, executor)), *steps)
    problem = f"{problems[0]} ({len(problems)} tag(s) not swept)" if problems else None
    return Share(steps, (_remaining(client, repository, problem),))


def _unknown_manifest(
    repository: str, tag: str, relisted: list[str] | RegistryError | None
) -> Result:
    """A listed tag whose manifest the registry answered 404 for: ``absent`` when a second
    listing no longer shows it (deleted meanwhile), else a dangling tag, ``failed``: the row
    stays until an operator repairs the repository (README "Registry answers")."""
    if isinstance(relisted, RegistryError):
        return failed(
            f"{repository}:{tag} has no manifest, and listing {repository} again to tell a "
            f"dangling tag from a deleted one failed: {relisted}"
        )
    if relisted is None or tag not in relisted:
        return ABSENT
    return failed(
        f"dangling tag: {repository} lists {tag!r} but the registry has no manifest for it "
        "(404 MANIFEST_UNKNOWN); the janitor cannot delete it, repair the repository "
        '(docs/registry.md, "Dangling tags")'
    )


def _tag_action(deployment: Deployment, target: str, digest: str | None, planned: Result) -> Action:
    return Action(EVENT, target, planned, deployment.release_name, {"digest": digest})


def _delete(
    client: RegistryClient, repository: str, actions: tuple[Action, ...], executor: Executor
) -> list[Result]:
    distinct = list(dict.fromkeys(str(a.fields["digest"]) for a in actions))
    outcomes = _gather(executor, [partial(client.delete_manifest, repository, d) for d in distinct])
    by_digest: dict[str, Result] = {}
    for digest, outcome in zip(distinct, outcomes, strict=True):
        if isinstance(outcome, RegistryError):
            by_digest[digest] = failed(f"deleting {repository}@{digest}: {outcome}")
        else:
            by_digest[digest] = DONE if outcome else ABSENT
    return [by_digest[str(a.fields["digest"])] for a in actions]


def _unswept(client: RegistryClient, deployment: Deployment, repository: str, error: str) -> Share:
    action = Action(EVENT, repository, failed(error), deployment.release_name)
    return Share((final(action),), (_remaining(client, repository, error),))


def _remaining(client: RegistryClient, repository: str, problem: str | None) -> Probe:
    def remaining() -> str | None:
        # A plan that could not see the whole repository cannot prove it clean: the row
        # stays, and the next run looks again (README "How a run works", step 3).
        if problem is not None:
            return f"repository {repository} was not fully swept: {problem}"
        try:
            tags = client.list_tags(repository)
        except RegistryError as exc:
            return f"cannot confirm repository {repository} is empty: {exc}"
        if tags:
            return f"repository {repository} still lists {len(tags)} tag(s)"
        return None

    return remaining


def _gather(executor: Executor, calls: Sequence[Callable[[], T]]) -> list[T | RegistryError]:
    """Runs ``calls`` on ``executor``, results in order. A call not started yet when its
    turn comes is run by the waiting thread itself, so a step called from a thread of the
    very executor it submits to cannot deadlock it; the client's own limit keeps the
    requests in flight at JANITOR_CONCURRENCY either way."""
    futures = [executor.submit(call) for call in calls]
    results: list[T | RegistryError] = []
    for future, call in zip(futures, calls, strict=True):
        try:
            results.append(call() if future.cancel() else future.result())
        except RegistryError as exc:
            results.append(exc)
    return results
