#!/usr/bin/env bash
# A highly available PostgreSQL pair on loopback for the fault tests: Patroni (Debian's
# `patroni`) with one etcd (Debian's `etcd-server`) as its consensus store, two PostgreSQL 15
# nodes on 127.0.0.1:5460 and 5461 (the machine's own binaries; no extension installed),
# synchronous replication so a commit acknowledged by the primary is on the standby too, and
# fast failure detection (ttl 10 s, loop_wait 2 s) so a test sees a failover in seconds.
#
# Usage:  ha.sh [start]   install if needed, start etcd and both nodes, wait for a leader and a
#                         streaming synchronous standby; idempotent
#         ha.sh stop      stop both nodes and etcd
#         ha.sh status    patronictl list
# The platform connects with a multi-host URL that finds the primary by itself:
#   postgresql://postgres@127.0.0.1:5460,127.0.0.1:5461/postgres?target_session_attrs=read-write
# Exit 3 when the packages cannot be installed (the HA tests then skip, saying why).
set -uo pipefail

BASE=${JINSUAN_HA_DIR:-/var/lib/jinsuan-ha}
ETCD_CLIENT=2479
ETCD_PEER=2480
PG_PORTS=(5460 5461)
REST_PORTS=(8108 8109)
PG_BIN=/usr/lib/postgresql/15/bin

fail() { echo "FAIL: $*"; exit "${2:-1}"; }

# From a directory that lasts: a server started from a checkout that is later removed cannot
# start again ("could not identify current directory").
as_postgres() { (cd / && su postgres -s /bin/bash -c "$1"); }

install() {
    local need=()
    command -v patroni >/dev/null || need+=(patroni)
    command -v etcd >/dev/null || need+=(etcd-server)
    command -v etcdctl >/dev/null || need+=(etcd-client)
    [ ${#need[@]} -eq 0 ] && return 0
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null \
        || fail "apt-get install ${need[*]}" 3
}

node_config() {  # node_config INDEX
    local i=$1 name="node$1" pg=${PG_PORTS[$1]} rest=${REST_PORTS[$1]}
    cat <<YAML
scope: jinsuan-ha
namespace: /jinsuan/
name: $name
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd3:
  host: 127.0.0.1:$ETCD_CLIENT
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_connections: 200
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $BASE/$name
  bin_dir: $PG_BIN
  pgpass: $BASE/$name.pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: $BASE
tags:
  nofailover: false
  noloadbalance: false
YAML
}

running() { pgrep -f "$1" >/dev/null 2>&1; }

start() {
    install
    mkdir -p "$BASE" && chown postgres:postgres "$BASE" && chmod 700 "$BASE"
    if ! running "etcd --name jinsuan-ha"; then
        as_postgres "nohup etcd --name jinsuan-ha --data-dir $BASE/etcd \
            --listen-client-urls http://127.0.0.1:$ETCD_CLIENT \
            --advertise-client-urls http://127.0.0.1:$ETCD_CLIENT \
            --listen-peer-urls http://127.0.0.1:$ETCD_PEER \
            --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER \
            --initial-cluster jinsuan-ha=http://127.0.0.1:$ETCD_PEER \
            >$BASE/etcd.log 2>&1 &"
    fi
    for _ in $(seq 100); do
        ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$ETCD_CLIENT endpoint health >/dev/null 2>&1 && break
        sleep 0.2
    done
    ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$ETCD_CLIENT endpoint health >/dev/null 2>&1 \
        || fail "etcd did not start: $(tail -5 "$BASE/etcd.log")"
    for i in 0 1; do
        node_config "$i" >"$BASE/node$i.yml"
        chown postgres:postgres "$BASE/node$i.yml"
        running "patroni $BASE/node$i.yml" || \
            as_postgres "nohup patroni $BASE/node$i.yml >>$BASE/node$i.log 2>&1 &"
    done
    # Ready: one leader, and a synchronous standby streaming from it.
    for _ in $(seq 300); do
        if curl -sf "http://127.0.0.1:${REST_PORTS[0]}/cluster" 2>/dev/null | python3 -c '
import json, sys
members = json.load(sys.stdin)["members"]
roles = sorted(m["role"] for m in members if m["state"] in ("running", "streaming"))
sys.exit(0 if roles == ["leader", "sync_standby"] else 1)' 2>/dev/null; then
            echo "PASS: Patroni HA pair on 127.0.0.1:${PG_PORTS[0]},${PG_PORTS[1]} (etcd $ETCD_CLIENT)"
            return 0
        fi
        sleep 0.5
    done
    fail "no leader with a synchronous standby after 150 s: $(tail -5 "$BASE/node0.log")"
}

stop() {
    pkill -f "patroni $BASE/node" 2>/dev/null
    for _ in $(seq 60); do running "patroni $BASE/node" || break; sleep 0.5; done
    for i in 0 1; do
        [ -f "$BASE/node$i/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl -D $BASE/node$i -m fast stop" >/dev/null 2>&1
    done
    pkill -f "etcd --name jinsuan-ha" 2>/dev/null
    echo "stopped"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) patronictl -c "$BASE/node0.yml" list ;;
    *) fail "usage: ha.sh [start|stop|status]" 2 ;;
esac
