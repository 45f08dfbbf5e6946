#!/usr/bin/env bash
# Makes the local services the tests and the demo use available on a fresh Debian machine:
# PostgreSQL running on 127.0.0.1:5432, and the real registry, Prometheus, Pushgateway and
# PgBouncer binaries (tests start those themselves on loopback ports).
set -euo pipefail

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# The run metrics tests push to a real Pushgateway, scraped by the real Prometheus.
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql)
# PgBouncer: the tests put one in transaction mode in front of PostgreSQL.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Debian's prometheus, prometheus-pushgateway and docker-registry packages start system
# services on install when an init system runs; the tests start their own instances on free
# loopback ports.

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
