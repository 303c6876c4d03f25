#!/usr/bin/env bash
# Make a PostgreSQL server available for the tool-registry tests and print the URL to use:
#     eval "$(bash .ci/postgres.sh)"
# Idempotent: if $LAMPS_TEST_POSTGRES_URL (or the default below) already answers, nothing is done.
# Otherwise installs Debian's postgresql package if missing, starts the cluster as the postgres
# user, and creates the test role and database.  Progress goes to stderr; stdout carries only the
# export line, so the script's output can be eval'ed.
set -euo pipefail

PG_USER="${LAMPS_PG_USER:-lamps}"
PG_PASSWORD="${LAMPS_PG_PASSWORD:-lamps}"
PG_DB="${LAMPS_PG_DB:-lamps_test}"
PG_HOST="${LAMPS_PG_HOST:-127.0.0.1}"
PG_PORT="${LAMPS_PG_PORT:-5432}"
URL="postgresql://${PG_USER}:${PG_PASSWORD}@${PG_HOST}:${PG_PORT}/${PG_DB}"

log() { echo "postgres.sh: $*" >&2; }

reachable() {  # $1: URL; true when a query succeeds within a few seconds
    command -v psql >/dev/null 2>&1 || return 1
    PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

if ! command -v psql >/dev/null 2>&1; then
    # The client first: a server may already be running elsewhere (a CI service container).
    log "installing the PostgreSQL client from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql-client >&2
fi
if [ -n "${LAMPS_TEST_POSTGRES_URL:-}" ] && reachable "$LAMPS_TEST_POSTGRES_URL"; then
    log "using the server at \$LAMPS_TEST_POSTGRES_URL"
    echo "export LAMPS_TEST_POSTGRES_URL='${LAMPS_TEST_POSTGRES_URL}'"
    exit 0
fi
if reachable "$URL"; then
    log "server already running and set up"
    echo "export LAMPS_TEST_POSTGRES_URL='${URL}'"
    exit 0
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true  # may have run just above
    apt-get install -y -qq postgresql >&2
fi

# Start the first cluster (creating one if the package did not).
read -r VERSION CLUSTER < <(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1, $2}') || true
if [ -z "${VERSION:-}" ]; then
    VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
    CLUSTER=main
    log "creating cluster ${VERSION}/${CLUSTER}"
    pg_createcluster "$VERSION" "$CLUSTER" --port "$PG_PORT" >&2
fi
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
    log "starting cluster ${VERSION}/${CLUSTER}"
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
for _ in $(seq 1 30); do
    as_postgres psql -Atqc 'select 1' >/dev/null 2>&1 && break
    sleep 0.5
done

# Role and database (idempotent).
as_postgres psql -v ON_ERROR_STOP=1 -Atq >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${PG_USER}') THEN
    CREATE ROLE ${PG_USER} LOGIN PASSWORD '${PG_PASSWORD}' CREATEDB;
  ELSE
    ALTER ROLE ${PG_USER} LOGIN PASSWORD '${PG_PASSWORD}' CREATEDB;
  END IF;
END \$\$;
SQL
if ! as_postgres psql -Atqc "select 1 from pg_database where datname = '${PG_DB}'" | grep -q 1; then
    as_postgres createdb -O "$PG_USER" "$PG_DB" >&2
fi

if ! reachable "$URL"; then
    log "server started but ${URL//:${PG_PASSWORD}@/:***@} does not answer"
    exit 1
fi
log "ready"
echo "export LAMPS_TEST_POSTGRES_URL='${URL}'"
