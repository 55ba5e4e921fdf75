#!/usr/bin/env bash
# PgBouncer (Debian's `pgbouncer`) in transaction pooling on 127.0.0.1:6432, in front of the
# machine's PostgreSQL on 127.0.0.1:5432, for the tests that run the platform through a pooler
# (tests/test_pgbouncer.py). One instance, run as the unprivileged user `postgres`, with its
# config, log and pid file in $JINSUAN_PGBOUNCER_DIR. A wildcard database entry passes any
# database name through, so the tests' fresh databases need no entry; authentication is trust
# on loopback, for users listed in userlist.txt (postgres).
#
# Usage:  pgbouncer.sh [start]   install if needed, write the config, start (or reload a running
#                                instance), wait until a query passes through; idempotent
#         pgbouncer.sh stop      stop the instance
#         pgbouncer.sh status    whether it runs, and its pools (the admin console's SHOW POOLS)
# The platform then uses, for instance:
#   DATABASE_URL=postgresql://postgres@127.0.0.1:6432/jinsuan  JINSUAN_DATABASE_POOLER=transaction
#   JINSUAN_DIRECT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/jinsuan
# Exit 3 when the package cannot be installed or this is not root (the tests then skip).
set -uo pipefail

BASE=${JINSUAN_PGBOUNCER_DIR:-/var/lib/jinsuan-pgbouncer}
HOST=127.0.0.1
PORT=6432
PG_HOST=127.0.0.1
PG_PORT=5432
USER_NAME=postgres
CONF=$BASE/pgbouncer.ini
PIDFILE=$BASE/pgbouncer.pid
LOG=$BASE/pgbouncer.log

fail() { echo "FAIL: $1"; exit "${2:-1}"; }

as_user() { su "$USER_NAME" -s /bin/bash -c "$1"; }

install() {
    command -v pgbouncer >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] || fail "pgbouncer is not installed, and only root can install it" 3
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq pgbouncer >/dev/null \
        || fail "apt-get install pgbouncer" 3
    # Where services may start, the package starts its own instance with Debian's config, which
    # listens on 6432 too: stop that one (ours has its own config and pid file).
    if [ -x /etc/init.d/pgbouncer ] && [ -s /run/postgresql/pgbouncer.pid ]; then
        /etc/init.d/pgbouncer stop >/dev/null 2>&1
    fi
}

config() {
    cat <<INI
;; Written by .ci/pgbouncer.sh: PgBouncer in transaction pooling for jinsuan's tests.
[databases]
* = host=$PG_HOST port=$PG_PORT

[pgbouncer]
listen_addr = $HOST
listen_port = $PORT
unix_socket_dir =
auth_type = trust
auth_file = $BASE/userlist.txt
admin_users = $USER_NAME
stats_users = $USER_NAME
pool_mode = transaction
max_client_conn = 500
default_pool_size = 10
max_db_connections = 20
;; Give idle server connections back soon: the PostgreSQL behind is shared with other tests.
server_idle_timeout = 10
server_lifetime = 300
ignore_startup_parameters = extra_float_digits
logfile = $LOG
pidfile = $PIDFILE
INI
}

running_pid() {  # the pid of our instance, when it runs
    [ -s "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null && grep -q pgbouncer "/proc/$pid/cmdline" 2>/dev/null \
        && echo "$pid"
}

passes() {  # a query reaches PostgreSQL through the pooler
    psql "host=$HOST port=$PORT user=$USER_NAME dbname=postgres connect_timeout=2" \
        -Atqc "SELECT 1" >/dev/null 2>&1
}

start() {
    install
    [ "$(id -u)" -eq 0 ] || fail "run as root (the instance runs as user $USER_NAME)" 3
    id "$USER_NAME" >/dev/null 2>&1 || fail "no user $USER_NAME (PostgreSQL's packages add it)"
    mkdir -p "$BASE" && chown "$USER_NAME:$USER_NAME" "$BASE" && chmod 700 "$BASE"
    config >"$CONF.new" && mv "$CONF.new" "$CONF"
    echo "\"$USER_NAME\" \"\"" >"$BASE/userlist.txt"
    chown "$USER_NAME:$USER_NAME" "$CONF" "$BASE/userlist.txt"
    local pid
    if pid=$(running_pid); then
        kill -HUP "$pid"  # reload the config just written
    else
        if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
            fail "something else listens on $HOST:$PORT (not the instance in $BASE)"
        fi
        as_user "pgbouncer -d -q $CONF" || fail "pgbouncer did not start: $(tail -5 "$LOG")"
    fi
    for _ in $(seq 100); do
        if passes; then
            echo "PASS: PgBouncer (transaction pooling) on $HOST:$PORT in front of $PG_HOST:$PG_PORT"
            return 0
        fi
        sleep 0.1
    done
    fail "no query passed through $HOST:$PORT in 10 s: $(tail -5 "$LOG" 2>/dev/null)"
}

stop() {
    local pid
    if pid=$(running_pid); then
        kill -TERM "$pid"  # immediate shutdown; clients see their connections close
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && fail "pgbouncer (pid $pid) did not stop"
    fi
    echo "stopped"
}

status() {
    local pid
    pid=$(running_pid) || { echo "not running"; exit 1; }
    echo "running (pid $pid) on $HOST:$PORT, pool_mode transaction"
    psql "host=$HOST port=$PORT user=$USER_NAME dbname=pgbouncer connect_timeout=2" \
        -c "SHOW POOLS"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) fail "usage: pgbouncer.sh [start|stop|status]" 2 ;;
esac
