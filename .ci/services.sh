#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster and an MLflow tracking server on loopback.
#
#   .ci/services.sh pytest -q            # what .ci/run does
#   .ci/services.sh bash                 # a shell with the services up, to poke at them
#
# PostgreSQL (Debian's packages; installed by .ci/run) is initialised in a temporary folder as the
# `postgres` user (postgres refuses to run as root), listens on 127.0.0.1 only (plus a private
# socket folder) and accepts password logins (scram-sha-256) for one role with a random password.
# Two databases: `optuna` (the shared study) and `mlflow` (the tracking server's backend store).
# `mlflow server` binds 127.0.0.1 and takes its database password from PGPASSWORD, so no password
# appears on a command line or in a log. The command sees:
#   POLYPSEG_TEST_PG_URL       postgresql://polypseg:<password>@127.0.0.1:<port>/optuna
#   POLYPSEG_TEST_MLFLOW_URI   http://127.0.0.1:<port>
# Both services stop, and the folder is removed, when the command ends (whatever its status).
set -euo pipefail

PG_PORT=${POLYPSEG_PG_PORT:-55432}
MLFLOW_PORT=${POLYPSEG_MLFLOW_PORT:-5055}
MLFLOW_BIN=${MLFLOW_BIN:-$(command -v mlflow || echo "$(dirname "$0")/../.venv/bin/mlflow")}

pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
    echo "services: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
    exit 1
fi

work=$(mktemp -d /tmp/polypseg-services.XXXXXX)
chmod 755 "$work"
mlflow_pid=""
# postgres refuses to run as root: as root, run it as the `postgres` user; else as ourselves.
if [[ $(id -u) -eq 0 ]]; then
    pg_user=postgres
    as_postgres() { runuser -u postgres -- "$@"; }
else
    pg_user=$(id -un)
    as_postgres() { "$@"; }
fi
stop_services() {
    local status=$?
    if [[ -n "$mlflow_pid" ]]; then
        kill "$mlflow_pid" 2>/dev/null || true
        wait "$mlflow_pid" 2>/dev/null || true
    fi
    if [[ -f "$work/pg/postmaster.pid" ]]; then
        as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap stop_services EXIT
trap 'exit 130' INT TERM

password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
install -d -o "$pg_user" -m 700 "$work/pg" "$work/socket" "$work/pglog"
# The superuser logs in only through the private socket (peer); TCP on 127.0.0.1 needs a password.
as_postgres "$pg_bin/initdb" -D "$work/pg" -U "$pg_user" --auth-local=peer \
    --auth-host=scram-sha-256 -E UTF8 >"$work/pglog/initdb.log"
as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pglog/postgres.log" -w -t 60 start \
    -o "-p $PG_PORT -k $work/socket -c listen_addresses=127.0.0.1 -c max_connections=200" \
    >/dev/null || { cat "$work/pglog/postgres.log" >&2; exit 1; }
psql_admin() {
    as_postgres "$pg_bin/psql" -h "$work/socket" -p "$PG_PORT" -U "$pg_user" -d postgres -qAt "$@"
}
psql_admin <<SQL
CREATE ROLE polypseg LOGIN PASSWORD '$password';
CREATE DATABASE optuna OWNER polypseg;
CREATE DATABASE mlflow OWNER polypseg;
SQL

mkdir -p "$work/artifacts"
PGPASSWORD=$password "$MLFLOW_BIN" server \
    --backend-store-uri "postgresql://polypseg@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "$work/artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 >"$work/mlflow.log" 2>&1 &
mlflow_pid=$!
for _ in $(seq 1 180); do
    if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$mlflow_pid" 2>/dev/null; then
        echo "services: mlflow server exited; its log:" >&2
        cat "$work/mlflow.log" >&2
        exit 1
    fi
    sleep 1
done
python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"
echo "services: PostgreSQL $(basename "$(dirname "$pg_bin")") on 127.0.0.1:$PG_PORT," \
    "mlflow server on http://127.0.0.1:$MLFLOW_PORT" >&2

export POLYPSEG_TEST_PG_URL="postgresql://polypseg:$password@127.0.0.1:$PG_PORT/optuna"
export POLYPSEG_TEST_MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
"$@"
