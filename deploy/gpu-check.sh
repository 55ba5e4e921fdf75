#!/usr/bin/env bash
# Read every NVIDIA GPU of this host once through the agent's NVML probe and print what was read:
# name, UUID, PCI bus id, power, energy, utilisation, memory, temperature, clocks, SM count,
# compute capability, MIG, ECC, XID events and the FP16 peak the platform will count.
# Nothing is sent anywhere. Exit status: 0 all GPUs answered, 1 a GPU failed, 2 no NVML.
#
# Usage: deploy/gpu-check.sh
#   Uses the jinsuan agent already installed for $PYTHON (default python3) when it has the NVML
#   probe and pynvml; otherwise installs this checkout and nvidia-ml-py into a venv at
#   $JINSUAN_CHECK_VENV (default: $TMPDIR/jinsuan-gpu-check) and runs from there.
set -euo pipefail

checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if ! "$python" -c 'import agents.probes.nvml, pynvml' 2>/dev/null; then
    venv="${JINSUAN_CHECK_VENV:-${TMPDIR:-/tmp}/jinsuan-gpu-check}"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet "$checkout" nvidia-ml-py
    python="$venv/bin/python"
fi

exec "$python" -m agents.probes.nvml
