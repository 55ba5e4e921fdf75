"""The processes ``bench/agent.py`` measures, one per run, so their CPU time and memory are theirs.

    python bench/agent_runner.py agent  --config site.toml --gpus 8 [--entry cli|daemon]
                                        [--modules-out FILE]
    python bench/agent_runner.py probes --config site.toml --gpus 8 --reads N
    python bench/agent_runner.py idle   --modules-from FILE

No GPU is here, so in every mode the module ``pynvml`` is the strict fake of
``tests/fakes/pynvml.py`` with ``--gpus`` GPUs (H100 and H800 alternately) whose power, energy
counter, load and temperature move every cycle. The shipped NVML probe imports it by name, as
it imports the real library on a GPU host; nothing else is replaced.

* ``agent``: the agent as an operator runs it: ``jinsuan agent run --config ...`` (the systemd
  unit's command, through the CLI) or, with ``--entry daemon``, ``python -m agents.daemon``.
  Everything is the shipped code: Modbus over TCP, the SQLite spool, signed gzip uploads,
  /metrics. On SIGTERM it stops as the agent does and writes the names of every module it had
  loaded.
* ``probes``: a reference for CPU. The same probes from the same config, read every interval
  on the agent's own per-probe threads (``agents.daemon.read_probes``), and nothing else: no
  batch, spool, upload or exporter. Prints ``read <n>`` after each read.
* ``idle``: the baseline for memory. Imports the modules the agent had loaded, prints
  ``ready`` and sleeps until stdin closes: the interpreter and its imports, without the agent.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
# Run as a script, bench/ is first on sys.path; the agent's packages live at the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import collections
import importlib
import time
import uuid
from datetime import UTC, datetime

_MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA H800")


def install_fake_nvml(gpus: int) -> None:
    """Make ``import pynvml`` give the strict fake with ``gpus`` GPUs that change every cycle."""
    from tests.fakes.pynvml import FakeGpu, FakeNvml  # imports the real pynvml for its constants

    class MovingNvml(FakeNvml):
        """Each enumeration (once per cycle, by the probe) moves every GPU's readings."""

        step = 0

        def nvmlDeviceGetCount(self) -> int:
            self.step += 1
            for i, gpu in enumerate(self.gpus):
                wave = (self.step * 7 + i * 13) % 101
                gpu.power_mw = 280_000 + wave * 1_237
                gpu.energy_mj = (gpu.energy_mj or 0) + gpu.power_mw * 10  # 10 s at that power
                gpu.util_gpu_percent = wave % 100
                gpu.memory_used = (20 + wave % 50) * 2**30
                gpu.temperature_c = 40 + wave % 35
            return super().nvmlDeviceGetCount()

    fake = MovingNvml([
        FakeGpu(
            name=_MODELS[i % len(_MODELS)],
            uuid=f"GPU-{uuid.UUID(int=0x6F0E7A4C << 96 | i)}",
            bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
        )
        for i in range(gpus)
    ])
    # The fake records every call for tests to inspect; here that record would be a growing
    # list the real library does not keep, so keep none.
    fake.calls = collections.deque(maxlen=0)  # type: ignore[assignment]
    sys.modules["pynvml"] = fake  # type: ignore[assignment]


def run_agent(config: Path, entry: str, modules_out: Path | None) -> int:
    options = ["--config", str(config), "--log-level", "WARNING"]
    if entry == "cli":
        from jinsuan.cli import main as jinsuan_main

        sys.argv = ["jinsuan", "agent", "run", *options]
        try:
            jinsuan_main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    else:
        from agents.daemon import main as daemon_main

        code = daemon_main(options)
    if modules_out is not None:
        loaded = sorted(name for name, module in sys.modules.items() if module is not None)
        modules_out.write_text("\n".join(loaded) + "\n", encoding="utf-8")
    return code


def run_probes(config_path: Path, reads: int) -> int:
    from agents.config import load_config
    from agents.daemon import read_probes, start_probes

    config = load_config(config_path)
    slots = start_probes(config)
    interval = config.agent.interval_s
    for n in range(1, reads + 1):
        started = time.monotonic()
        results = read_probes(slots, datetime.now(UTC))
        failed = [error for result in results for error in result.errors]
        if failed:
            print(f"probe errors: {failed}", file=sys.stderr)
            return 1
        print(f"read {n}", flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return 0


def run_idle(modules_from: Path) -> int:
    names = modules_from.read_text(encoding="utf-8").split()
    missed = []
    for name in names:
        if name == "__main__" or name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # a module only importable in its parent's context, or gone
            missed.append(name)
    print(f"ready {len(names) - len(missed)} {len(missed)}", flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    agent = sub.add_parser("agent")
    agent.add_argument("--config", type=Path, required=True)
    agent.add_argument("--gpus", type=int, required=True)
    agent.add_argument("--entry", choices=("cli", "daemon"), default="cli")
    agent.add_argument("--modules-out", type=Path)
    probes = sub.add_parser("probes")
    probes.add_argument("--config", type=Path, required=True)
    probes.add_argument("--gpus", type=int, required=True)
    probes.add_argument("--reads", type=int, required=True)
    idle = sub.add_parser("idle")
    idle.add_argument("--modules-from", type=Path, required=True)
    args = parser.parse_args()
    if args.mode == "idle":
        return run_idle(args.modules_from)
    install_fake_nvml(args.gpus)
    if args.mode == "agent":
        return run_agent(args.config, args.entry, args.modules_out)
    return run_probes(args.config, args.reads)


if __name__ == "__main__":
    sys.exit(main())
