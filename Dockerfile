# syntax=docker/dockerfile:1
# astro-janitor image: `docker build -t astro-janitor:0.1.0 --build-arg VERSION=0.1.0 .`
# Every dependency ships manylinux wheels (psycopg[binary] bundles libpq), so neither stage
# needs a compiler; the build stage exists to keep pip, the sources and build caches out of
# the image that runs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/janitor
COPY pyproject.toml README.md ./
COPY janitor ./janitor
# A regular (non-editable) install: the venv must work without /src. pip byte-compiles
# the package here, because the root filesystem is read-only at run time.
RUN /opt/janitor/bin/pip install --no-cache-dir . \
    && /opt/janitor/bin/pip uninstall --yes pip \
    && /opt/janitor/bin/janitor --version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="astro-janitor" \
      org.opencontainers.image.description="Retention janitor for an Astronomer-style Airflow platform" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# A named user for libpq and Python's home-directory lookups; the chart runs the same
# numeric UID (runAsUser 10001), which is what runAsNonRoot checks.
RUN groupadd --system --gid 10001 janitor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin janitor
COPY --from=build /opt/janitor /opt/janitor
ENV PATH=/opt/janitor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["janitor"]
CMD ["run"]
