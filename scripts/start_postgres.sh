#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store tests (Debian: `apt-get install -y postgresql`).
#
#   export STREAMKV_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh [start] [PORT])
#   bash scripts/start_postgres.sh stop [PORT]
#
# Listens on 127.0.0.1:PORT (default 55432) only, trusts loopback connections, keeps its data in
# ${TMPDIR:-/tmp}/streamkv-pg-PORT and trades durability for speed (fsync off): test data only.
# Only the URL goes to stdout; progress and errors go to stderr.
set -euo pipefail

action=${1:-start}
port=${2:-${STREAMKV_PG_PORT:-55432}}
dbname=${STREAMKV_PG_DB:-streamkv_test}
base="${TMPDIR:-/tmp}/streamkv-pg-${port}"
data="$base/data"
url="postgresql+psycopg://postgres@127.0.0.1:${port}/${dbname}"

log() { echo "start_postgres: $*" >&2; }

find_bindir() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    # Debian keeps the server binaries off PATH, one folder per major version: take the newest.
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$dir" || ! -x "$dir/pg_ctl" ]]; then
        log "no PostgreSQL server binaries found (install them: apt-get install -y postgresql)"
        exit 1
    fi
    echo "$dir"
}

bindir=$(find_bindir)

# PostgreSQL refuses to run as root: run as the `postgres` OS user then, else as ourselves.
# Either way the database superuser is called `postgres` (initdb -U postgres).
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        if ! id postgres >/dev/null 2>&1; then
            log "running as root but there is no 'postgres' OS user to run the server"
            exit 1
        fi
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$action" in
    start)
        if [[ -f "$data/postmaster.pid" ]] && as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
            log "already running on port $port"
            echo "$url"
            exit 0
        fi
        rm -rf "$base"
        mkdir -p "$base"
        [[ $(id -u) -eq 0 ]] && chown postgres: "$base"
        as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C >"$base/initdb.log" 2>&1 || { cat "$base/initdb.log" >&2; exit 1; }
        # The socket lives in our folder: /var/run/postgresql may not exist or be writable.
        cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$base'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        # Trust on loopback only (initdb --auth=trust also covers the local socket).
        cat >"$data/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 trust
EOF
        as_pg "$bindir/pg_ctl" -D "$data" -l "$base/server.log" -w -t 60 start >&2 \
            || { cat "$base/server.log" >&2; exit 1; }
        as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$dbname"
        log "running on 127.0.0.1:$port (data in $data; stop with: $0 stop $port)"
        echo "$url"
        ;;
    stop)
        if [[ -d "$data" ]]; then
            as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >&2 || true
            rm -rf "$base"
            log "stopped the cluster on port $port"
        else
            log "no cluster on port $port"
        fi
        ;;
    url)
        echo "$url"
        ;;
    *)
        log "usage: $0 [start|stop|url] [PORT]"
        exit 2
        ;;
esac
