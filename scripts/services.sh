#!/usr/bin/env bash
# Throwaway Redis and PostgreSQL servers for the test suite.
#
#   scripts/services.sh up     install what is missing (as root), start both on free loopback ports
#   scripts/services.sh down   stop both and delete their data; safe to run at any time
#   scripts/services.sh env    print the environment the tests read (for `eval`)
#
# State lives in $BASTION_SERVICES_DIR (default .services/): `env` holds the URLs the tests read and
# what `down` needs to stop the servers. Data directories live in a fresh temporary directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATE_DIR=${BASTION_SERVICES_DIR:-.services}
ENV_FILE=$STATE_DIR/env
PG_OS_USER=bastion-pg
PG_ROLE=bastion
PG_DATABASE=bastion_test

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

python_bin() {
    local candidate
    for candidate in python3 python3.11 python; do
        if command -v "$candidate" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    die "no python interpreter found to pick free ports"
}

# Two distinct free TCP ports on 127.0.0.1 (both sockets are held open while choosing).
free_ports() {
    "$(python_bin)" - <<'EOF'
import socket

sockets = []
for _ in range(2):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sockets.append(sock)
print(" ".join(str(sock.getsockname()[1]) for sock in sockets))
for sock in sockets:
    sock.close()
EOF
}

# The directory holding pg_ctl: PATH first, else the newest Debian install.
pg_bindir() {
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    local dir
    dir=$(find /usr/lib/postgresql -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $dir && -x $dir/pg_ctl ]] && echo "$dir"
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$@" >&2; then
        log "apt-get install failed; refreshing the package lists and retrying"
        apt-get update >&2
        apt-get install -y --no-install-recommends "$@" >&2
    fi
}

ensure_binaries() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    [[ -n $(pg_bindir) ]] || missing+=(postgresql)
    ((${#missing[@]} == 0)) && return
    if [[ $(id -u) -ne 0 ]]; then
        die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    fi
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
}

# PostgreSQL refuses to run as root: as root, run it as a dedicated system user.
pg_run() {
    # From / so that an unreadable working directory does not trouble the server's user.
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
        "$@"
    fi
}

wait_for_redis() {
    local port=$1 attempt
    for attempt in $(seq 1 100); do
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "redis-server did not answer on port $port"
}

up() {
    if [[ -f $ENV_FILE ]]; then
        log "stopping services left by an earlier run"
        down
    fi
    ensure_binaries
    local bindir tmp redis_port pg_port
    bindir=$(pg_bindir)
    tmp=$(mktemp -d -t bastion-services.XXXXXX)
    read -r redis_port pg_port < <(free_ports)
    mkdir -p "$STATE_DIR"

    # Written first so that `down` can clean up whatever a failed start leaves behind.
    cat >"$ENV_FILE" <<EOF
export BASTION_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0
export BASTION_TEST_DATABASE_URL=postgresql+asyncpg://$PG_ROLE@127.0.0.1:$pg_port/$PG_DATABASE
BASTION_SERVICES_TMP=$tmp
BASTION_SERVICES_PG_BIN=$bindir
EOF

    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$tmp/redis.pid" --dir "$tmp" --logfile "$tmp/redis.log"
    wait_for_redis "$redis_port"
    log "redis-server on 127.0.0.1:$redis_port"

    if [[ $(id -u) -eq 0 ]]; then
        if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
            useradd --system --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$PG_OS_USER"
        fi
        chown "$PG_OS_USER" "$tmp"
    fi
    chmod 700 "$tmp"
    pg_run "$bindir/initdb" --pgdata="$tmp/pg" --username="$PG_ROLE" --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$tmp/initdb.log" 2>&1 ||
        die "initdb failed: $(cat "$tmp/initdb.log")"
    cat >"$tmp/pg/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
    # pg_stat_statements (a contrib module shipped with the server packages) lets the tests of
    # `bastion db advise` read statement statistics; skipped where the module is missing.
    local preload=""
    if [[ -f $(dirname "$bindir")/lib/pg_stat_statements.so ]]; then
        preload="-c shared_preload_libraries=pg_stat_statements"
    fi
    pg_run "$bindir/pg_ctl" --pgdata="$tmp/pg" --log="$tmp/postgres.log" --wait --timeout=60 \
        --options="-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 $preload" \
        start >/dev/null || die "postgres did not start: $(tail -n 20 "$tmp/postgres.log")"
    pg_run "$bindir/createdb" --host=127.0.0.1 --port="$pg_port" --username="$PG_ROLE" "$PG_DATABASE"
    log "postgres on 127.0.0.1:$pg_port (database $PG_DATABASE, role $PG_ROLE)"
}

down() {
    [[ -f $ENV_FILE ]] || return 0
    local BASTION_SERVICES_TMP="" BASTION_SERVICES_PG_BIN=""
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    local tmp=$BASTION_SERVICES_TMP
    if [[ -n $tmp && -d $tmp ]]; then
        if [[ -f $tmp/redis.pid ]]; then
            local pid attempt
            pid=$(cat "$tmp/redis.pid")
            if kill "$pid" 2>/dev/null; then
                for attempt in $(seq 1 50); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
            fi
        fi
        if [[ -f $tmp/pg/postmaster.pid && -x $BASTION_SERVICES_PG_BIN/pg_ctl ]]; then
            pg_run "$BASTION_SERVICES_PG_BIN/pg_ctl" --pgdata="$tmp/pg" --mode=fast --wait \
                stop >/dev/null 2>&1 || log "postgres was not running"
        fi
        rm -rf "$tmp"
    fi
    rm -f "$ENV_FILE"
    log "stopped"
}

case "${1:-}" in
up) up ;;
down) down ;;
env)
    [[ -f $ENV_FILE ]] || die "services are not running: scripts/services.sh up"
    grep '^export ' "$ENV_FILE"
    ;;
*)
    echo "usage: $0 up|down|env" >&2
    exit 2
    ;;
esac
