#!/usr/bin/env bash
# Install and start a single-node Slurm cluster (munged, slurmctld, slurmd) on this Debian host.
# Idempotent: installs only what is missing, keeps a config it wrote before, reuses running
# daemons, and returns once `sinfo` shows the node idle. Run as root.
#
# Exit status: 0 ready; 3 the packages cannot be installed (callers may skip Slurm tests);
# anything else is a real failure, with the daemons' log tails on stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATES="$HERE/tests/slurm"
STATE="${JINSUAN_SLURM_STATE:-/var/lib/jinsuan-slurm}"
CONF_DIR=/etc/slurm
MARKER="# A single-node Slurm cluster for jinsuan's tests and CI"
WAIT_S="${JINSUAN_SLURM_WAIT_S:-60}"

log() { echo "slurm.sh: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (starts munged, slurmctld and slurmd)"
    exit 3
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    log "installing slurm-wlm and munge"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends slurm-wlm munge; } >&2; then
        log "cannot install slurm-wlm and munge with apt-get"
        exit 3
    fi
fi

host="$(hostname -s)"
cpus="$(nproc)"
mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d"
for i in 0 1 2 3; do ln -sfn /dev/null "$STATE/fake-gpu$i"; done

render() {
    sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" -e "s|@STATE@|$STATE|g" "$1"
}

if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    log "keeping the existing $CONF_DIR/slurm.conf (not written by this script)"
else
    render "$TEMPLATES/slurm.conf.in" >"$CONF_DIR/slurm.conf.new"
    render "$TEMPLATES/gres.conf.in" >"$CONF_DIR/gres.conf.new"
    mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
    mv "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"
fi

# munge: a key (the package normally creates one) and a running daemon.
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- munged
fi

# A daemon is alive if the pid file its config names holds a live process (this also finds
# daemons started by systemd; procps may be absent on slim images, so no pgrep).
conf_value() {
    local value
    value="$(sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\([^[:space:]#]*\).*/\1/Ip" \
        "$CONF_DIR/slurm.conf" | tail -n 1)"
    echo "${value:-$2}"
}
running() {
    local pidfile="$1"
    [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

if ! running "$(conf_value SlurmctldPidFile /run/slurmctld.pid)"; then
    log "starting slurmctld"
    slurmctld
fi
if ! running "$(conf_value SlurmdPidFile /run/slurmd.pid)"; then
    log "starting slurmd"
    slurmd
fi

deadline=$((SECONDS + WAIT_S))
while true; do
    state="$(sinfo --noheader --nodes="$host" --format=%t 2>/dev/null || true)"
    case "$state" in
        idle* | mix* | alloc*) break ;;
        down* | drain* | fail*)
            # A node left down by an earlier run: return it to service.
            scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    if ((SECONDS >= deadline)); then
        log "node $host not idle after ${WAIT_S}s (state: ${state:-unknown})"
        tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 2>/dev/null || true
        exit 1
    fi
    sleep 1
done
log "ready: node $host is ${state}"
