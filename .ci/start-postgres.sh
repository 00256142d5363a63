#!/usr/bin/env bash
# Start the local PostgreSQL 15 cluster and make the test role and database.
# Idempotent: safe to run twice. Run as root. The last line printed is the database URL.
set -euo pipefail

VERSION=15
CLUSTER=main
PORT=5432
ROLE=sweeper
PASSWORD=sweeper
DATABASE=sweeper_test

if [[ $(id -u) -ne 0 ]]; then
    echo "start-postgres.sh: run as root (it starts the cluster and switches to the postgres user)" >&2
    exit 1
fi

as_postgres() { runuser -u postgres -- "$@"; }
psql_admin() { as_postgres psql --port "$PORT" --no-psqlrc --quiet --tuples-only --no-align "$@"; }

if ! pg_isready --quiet --host 127.0.0.1 --port "$PORT"; then
    # "already running" is fine; any other failure shows up in the wait below.
    pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" start 2>&1 \
        | grep -v "already running" >&2 || true
fi

for _ in $(seq 1 60); do
    pg_isready --quiet --host 127.0.0.1 --port "$PORT" && break
    sleep 0.5
done
if ! pg_isready --host 127.0.0.1 --port "$PORT" >&2; then
    echo "start-postgres.sh: PostgreSQL did not accept connections on port $PORT within 30 s" >&2
    tail -n 20 "/var/log/postgresql/postgresql-$VERSION-$CLUSTER.log" >&2 || true
    exit 1
fi

if [[ -z $(psql_admin --dbname postgres --command "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'") ]]; then
    psql_admin --dbname postgres --command "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >/dev/null
fi
if [[ -z $(psql_admin --dbname postgres --command "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'") ]]; then
    psql_admin --dbname postgres --command "CREATE DATABASE $DATABASE OWNER $ROLE" >/dev/null
fi

echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
