# syntax=docker/dockerfile:1
# astro-janitor image: `make image` (scripts/image.py) builds it with Docker or buildah, on
# the official Python base when it can be pulled, else on a Debian bookworm base of its own.
# By hand: `docker build -t astro-janitor:0.1.0 --build-arg VERSION=0.1.0 .`
# Every dependency ships manylinux wheels (psycopg[binary] bundles libpq), so neither stage
# needs a compiler; the build stage exists to keep pip, the sources and build caches out of
# the image that runs. Both bases (python:3.11-slim-bookworm, Debian's python3 3.11) have
# `python3`; only the official one has `python`, so the build calls `python3`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Every image of this build, its cached intermediate steps too, carries the title:
# scripts/image.py prunes superseded ones by it and leaves other projects' images alone.
LABEL org.opencontainers.image.title="astro-janitor"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONFIG_FILE=/run/secrets/pip.conf \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/janitor
# The dependencies get a layer of their own, keyed on pyproject.toml alone: a change to
# janitor/ or README.md reinstalls only the package. Wheels are kept in a cache mount (by
# the builder, between builds, never in a layer): `pip download` fetches only what is not
# there yet, pip installs from it. pip's own HTTP cache keeps nothing behind an index proxy
# that drops Cache-Control. pip's settings (the host's index, proxy and CA bundle, see
# scripts/image.py) are build secrets, so no index URL or credential lands in a layer.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print(*p["project"]["dependencies"], sep="\n", file=open("requirements.txt", "w")); print(*p["build-system"]["requires"], sep="\n", file=open("build-requirements.txt", "w"))'
RUN --mount=type=cache,target=/var/cache/wheels,sharing=locked \
    --mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=pip-cert.pem,target=/run/secrets/pip-cert.pem \
    /opt/janitor/bin/pip download --quiet --dest /var/cache/wheels --requirement requirements.txt \
    && /opt/janitor/bin/pip install --no-index --find-links /var/cache/wheels --requirement requirements.txt
COPY README.md ./
COPY janitor ./janitor
# A regular (non-editable) install: the venv must work without /src. pip byte-compiles
# the package here, because the root filesystem is read-only at run time. pip and
# setuptools leave the venv (nothing runs them at run time); pip-list.txt records what ships.
RUN --mount=type=cache,target=/var/cache/wheels,sharing=locked \
    --mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=pip-cert.pem,target=/run/secrets/pip-cert.pem \
    /opt/janitor/bin/pip download --quiet --dest /var/cache/wheels --requirement build-requirements.txt \
    && /opt/janitor/bin/pip install --no-index --find-links /var/cache/wheels --no-deps . \
    && /opt/janitor/bin/pip check \
    && /opt/janitor/bin/pip uninstall --yes setuptools \
    && /opt/janitor/bin/pip list --format=freeze --exclude pip > /opt/janitor/pip-list.txt \
    && /opt/janitor/bin/pip uninstall --yes pip \
    && /opt/janitor/bin/janitor --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="astro-janitor"
# A named user for libpq and Python's home-directory lookups; the chart runs the same
# numeric UID (runAsUser 10001), which is what runAsNonRoot checks.
RUN groupadd --system --gid 10001 janitor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin janitor
# pg_dump and pg_restore for the final backups (README "Final backups and restore"): Debian's
# own client, kept current by bookworm's security updates rather than pinned (hence DL3008).
# A server newer than it is reported by the plan and `janitor check`, and nothing is dropped.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version
COPY --from=build /opt/janitor /opt/janitor
ENV PATH=/opt/janitor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The labels come after the layers: a new revision relabels the image without redoing them.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.description="Retention janitor for an Astronomer-style Airflow platform" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
USER 10001:10001
ENTRYPOINT ["janitor"]
CMD ["run"]
