"""The site agent's own overhead: CPU per sampling cycle and resident memory, with baselines.

The real agent runs in a process of its own (``bench/agent_runner.py agent``, the shipped
``agents.daemon.main``) with 8 accelerators (the shipped NVML probe over the strict fake of
``pynvml``: no GPU here) and 4 power meters (the shipped Modbus probe against 4 pymodbus TCP
servers on loopback, one per meter, four register maps). Everything that costs the agent
something is on: each cycle's batch is signed, gzipped and appended to the SQLite spool (WAL,
``synchronous=FULL``), the uploader sends it to a receiver on loopback (``tests.agent_peers``:
it checks the Ed25519 signature and validates the batch with the wire schema, then answers
with the platform's ``ReportAck``), and the bench scrapes the agent's /metrics once per cycle,
as a Prometheus with a 10 s scrape interval would. All measurements are taken from outside,
from ``/proc/<pid>``.

1. **CPU per cycle.** The agent samples every ``--interval`` seconds (default 1 s, to keep the
   run short). After ``--warmup`` batches have reached the receiver, utime + stime are read at
   that batch's arrival and again ``--cycles`` batches later: CPU per cycle, start-up excluded.
   A cycle's work does not depend on the interval, but a running agent also wakes while idle
   (the /metrics server's poll, the uploader's spool check), and that cost grows with time, not
   cycles. So a second agent with an interval of an hour (it never samples during the bench)
   gives the idle cost per second, from the threads' scheduler statistics (ns resolution), and
   the figure at the aim's 10 s interval is ``(cycle work + 10 s x idle rate) / 10 s``.
2. **Resident memory.** VmRSS after the last measured cycle (steady), VmHWM (peak), RssAnon
   (the process's own heap and stacks, not shared library pages) and Pss.

Baselines from the same run:

* memory: a bare Python process that imports every module the agent had loaded, then idles
  (``agent_runner.py idle``): the interpreter and its imports. Ratio and difference show what
  the running agent adds;
* CPU: the same probes from the same config read on the same per-probe threads, with no batch,
  spool, upload or exporter (``agent_runner.py probes``): what the device reads cost alone.
  (The idle bare process uses no CPU, so a ratio to it would say nothing.)

    python bench/agent.py [--gpus 8] [--meters 4] [--interval 1] [--cycles 30] [--warmup 5]
                          [--idle-s 20]

Aim (issue 3): under 1 % of one core at a 10 s interval and under 60 MB resident.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agents.identity import enrol
from agents.probes.registermaps import TO_BASE, Register, load_map
from tests.agent_peers import Receiver

RUNNER = _HERE / "agent_runner.py"
AIM_CORE_PERCENT = 1.0
AIM_RSS_MB = 60.0
AIM_INTERVAL_S = 10.0
TICKS = os.sysconf("SC_CLK_TCK")
MB = 2**20
UNIT_ID = 1

# (map, role, measures, W served, J served) for the meters, in order; more meters repeat them.
METERS = (
    ("eastron-sdm630", "facility", "utility_input", 412_500.0, 3.1e12),
    ("schneider-pm5xxx", "it", "ups_output", 301_250.0, 2.2e12),
    ("acrel-adw300", "it", "pdu_output", 151_000.0, 1.1e12),
    ("acrel-ddsy1352", "it", "pdu_output", 3_456.0, 4.4e10),
)


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, threads that have exited included (tick resolution)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5)


def thread_cpu_ns(pid: int) -> int:
    """Sum of the live threads' time on CPU (schedstat, ns): precise, but misses dead threads."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue
    return total


@dataclass(frozen=True)
class Memory:
    rss: int
    hwm: int
    anon: int
    pss: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            status = dict(_kb_lines(f.read()))
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            rollup = dict(_kb_lines(f.read()))
        return cls(status["VmRSS"], status["VmHWM"], status["RssAnon"], rollup["Pss"])


def _kb_lines(text: str) -> Iterator[tuple[str, int]]:
    for match in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.MULTILINE):
        yield match[1], int(match[2]) * 1024


# -- peers ------------------------------------------------------------------------------------


def _registers(value: float, spec: Register) -> list[int]:
    """What a meter holds for ``value`` (W or J) under ``spec``: the inverse of the probe."""
    raw = value / (spec.scale * TO_BASE[spec.unit])
    datatype = ModbusTcpClient.DATATYPE[spec.type.upper()]
    number = raw if spec.type.startswith("float") else round(raw)
    return ModbusTcpClient.convert_to_registers(number, datatype, word_order=spec.word_order)


def _meter_device(map_name: str, watts: float, joules: float) -> SimDevice:
    register_map = load_map(map_name)
    blocks: dict[str, dict[int, list[int]]] = {"holding": {}, "input": {}}
    for spec, value in ((register_map.power, watts), (register_map.energy, joules)):
        if spec is not None:
            blocks[spec.kind][spec.address] = _registers(value, spec)

    def simdata(registers: dict[int, list[int]]) -> list[SimData]:
        return [SimData(a, values=v, datatype=DataType.REGISTERS)
                for a, v in sorted(registers.items())] or [
                    SimData(0, values=0, datatype=DataType.REGISTERS)]

    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    return SimDevice(id=UNIT_ID, simdata=(bits, bits, simdata(blocks["holding"]),
                                          simdata(blocks["input"])))


@contextmanager
def meter_servers(count: int) -> Iterator[list[int]]:
    """``count`` pymodbus TCP servers on loopback (one meter each); yields their ports."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modbus-servers", daemon=True)
    thread.start()
    servers: list[ModbusTcpServer] = []

    async def start(device: SimDevice) -> int:
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
        return int(server.transport.sockets[0].getsockname()[1])

    try:
        ports = []
        for i in range(count):
            map_name, _, _, watts, joules = METERS[i % len(METERS)]
            device = _meter_device(map_name, watts, joules)
            ports.append(asyncio.run_coroutine_threadsafe(start(device), loop).result(10))
        yield ports
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_config(
    folder: Path, receiver: Receiver, token: str, *, meter_ports: list[int],
    interval_s: float, metrics_port: int,
) -> Path:
    """Enrol an agent with the receiver and write its config; returns the config's path."""
    state = folder / "state"
    receiver.add_token(token)
    enrol(state, receiver.url, token)
    meters = []
    for i, port in enumerate(meter_ports):
        map_name, role, measures, _, _ = METERS[i % len(METERS)]
        meters.append(
            f'[[probes.modbus.meters]]\nid = "meter-{i + 1}"\nhost = "127.0.0.1"\n'
            f'port = {port}\nunit_id = {UNIT_ID}\nmap = "{map_name}"\nrole = "{role}"\n'
            f'measures = "{measures}"\nracks = ["A01", "A02"]\ntimeout_s = 2.0\n')
    text = (
        f'[site]\nname = "bench-site"\nracks = ["A01", "A02"]\n\n'
        f'[agent]\nplatform_url = "{receiver.url}"\nstate_dir = "{state}"\n'
        f'interval_s = {interval_s}\nmetrics_listen = "127.0.0.1:{metrics_port}"\n\n'
        f'[probes.nvml]\nrack = "A01"\n\n'
        f'[[probes.modbus]]\n' + "\n".join(meters)
    )
    path = folder / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- processes --------------------------------------------------------------------------------


@contextmanager
def runner(*args: str, log: Path, stdin: int | None = None) -> Iterator[subprocess.Popen[str]]:
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, str(RUNNER), *args], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _fail(message: str, log: Path) -> SystemExit:
    tail = log.read_text(encoding="utf-8")[-3000:] if log.exists() else ""
    return SystemExit(f"{message}\n--- {log} ---\n{tail}")


def wait_for_batches(receiver: Receiver, count: int, proc: subprocess.Popen[str],
                     log: Path, timeout: float) -> None:
    try:
        receiver.wait_for(lambda state: len(state.stored) >= count, timeout)
    except AssertionError:
        state = "exited" if proc.poll() is not None else "running"
        raise _fail(f"agent ({state}) delivered fewer than {count} batches in {timeout:g}s",
                    log) from None


@dataclass(frozen=True)
class AgentRun:
    cpu_per_cycle_s: float
    memory: Memory
    rss_after_warmup: int
    samples_per_batch: int
    metrics_text: str


def measure_agent(config: Path, receiver: Receiver, args: argparse.Namespace,
                  modules_out: Path, log: Path) -> AgentRun:
    metrics_url = _metrics_url(config)
    timeout = 30 + 5 * args.interval
    with runner("agent", "--config", str(config), "--gpus", str(args.gpus), "--entry",
                args.entry, "--modules-out", str(modules_out), log=log) as proc, \
            httpx.Client(timeout=10) as http:
        wait_for_batches(receiver, args.warmup, proc, log, timeout + args.warmup * args.interval)
        cpu0 = cpu_seconds(proc.pid)
        rss0 = Memory.of(proc.pid).rss
        text = http.get(metrics_url).text
        for k in range(args.warmup + 1, args.warmup + args.cycles + 1):
            wait_for_batches(receiver, k, proc, log, timeout)
            if k == args.warmup + args.cycles:
                cpu1 = cpu_seconds(proc.pid)
                memory = Memory.of(proc.pid)
            else:
                text = http.get(metrics_url).text
        proc.send_signal(signal.SIGTERM)
        if proc.wait(60) != 0:
            raise _fail(f"agent exited with {proc.returncode}", log)
    with receiver.lock:
        samples = set(receiver.state.stored.values())
    if len(samples) != 1:
        raise SystemExit(f"batches carried different sample counts: {sorted(samples)}")
    return AgentRun((cpu1 - cpu0) / args.cycles, memory, rss0, samples.pop(), text)


def measure_idle_agent(config: Path, args: argparse.Namespace, log: Path) -> float:
    """CPU seconds per second of an agent between cycles (its interval is an hour)."""
    metrics_url = _metrics_url(config)
    with runner("agent", "--config", str(config), "--gpus", str(args.gpus), "--entry",
                args.entry, log=log) as proc:
        deadline = time.monotonic() + 30
        while True:  # started once /metrics answers
            try:
                httpx.get(metrics_url, timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise _fail("idle agent did not start", log) from None
                time.sleep(0.2)
        time.sleep(1.0)  # let start-up work settle
        ns0, t0 = thread_cpu_ns(proc.pid), time.monotonic()
        time.sleep(args.idle_s)
        ns1, t1 = thread_cpu_ns(proc.pid), time.monotonic()
    return (ns1 - ns0) / 1e9 / (t1 - t0)


def measure_probes(config: Path, args: argparse.Namespace, log: Path) -> float:
    reads = args.warmup + args.cycles
    with runner("probes", "--config", str(config), "--gpus", str(args.gpus), "--reads",
                str(reads), log=log) as proc:
        assert proc.stdout is not None
        cpu0 = cpu1 = None
        for line in proc.stdout:
            n = int(line.split()[1])
            if n == args.warmup:
                cpu0 = cpu_seconds(proc.pid)
            elif n == reads:
                cpu1 = cpu_seconds(proc.pid)
        if proc.wait(30) != 0 or cpu0 is None or cpu1 is None:
            raise _fail("probe-only baseline failed", log)
    return (cpu1 - cpu0) / args.cycles


def measure_bare(modules: Path, log: Path) -> tuple[Memory, str]:
    with runner("idle", "--modules-from", str(modules), log=log,
                stdin=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise _fail("bare baseline did not start", log)
        memory = Memory.of(proc.pid)
        proc.stdin.close()
        proc.wait(30)
    return memory, f"{ready[1]} modules imported, {ready[2]} not importable alone"


def _metrics_url(config: Path) -> str:
    port = re.search(r'metrics_listen = "127\.0\.0\.1:(\d+)"', config.read_text())
    assert port is not None
    return f"http://127.0.0.1:{port[1]}/metrics"


def check_metrics(text: str, gpus: int, meters: int) -> None:
    """The agent really read every device without errors (from its own /metrics)."""
    power = len(re.findall(r"^jinsuan_accelerator_power_watts\{", text, re.MULTILINE))
    meter = len(re.findall(r"^jinsuan_meter_power_watts\{", text, re.MULTILINE))
    errors = re.findall(r"^jinsuan_agent_probe_errors_total\{.*\} (\S+)$", text, re.MULTILINE)
    if power != gpus or meter != meters or any(float(e) for e in errors):
        raise SystemExit(f"agent read {power}/{gpus} GPUs, {meter}/{meters} meters, "
                         f"probe errors {errors}")


# -- report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--meters", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="sampling interval of the measured run, seconds")
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--entry", choices=("cli", "daemon"), default="cli",
                        help="cli: `jinsuan agent run` (default); daemon: python -m agents.daemon")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="jinsuan-bench-agent-") as tmp, \
            meter_servers(args.meters) as ports:
        folder = Path(tmp)
        receiver = Receiver(keep=lambda batch: batch.sample_count()).start()
        try:
            busy, idle = folder / "busy", folder / "idle"
            busy.mkdir()
            idle.mkdir()
            common = {"meter_ports": ports}
            busy_config = site_config(busy, receiver, "bench-agent-busy-token",
                                      interval_s=args.interval, metrics_port=free_port(),
                                      **common)
            idle_config = site_config(idle, receiver, "bench-agent-idle-token", interval_s=3600,
                                      metrics_port=free_port(), **common)
            modules = folder / "modules.txt"
            run = measure_agent(busy_config, receiver, args, modules, folder / "agent.log")
            check_metrics(run.metrics_text, args.gpus, args.meters)
            idle_rate = measure_idle_agent(idle_config, args, folder / "idle.log")
            probes = measure_probes(busy_config, args, folder / "probes.log")
            bare, imported = measure_bare(modules, folder / "bare.log")
        finally:
            receiver.stop()
    report(args, run, idle_rate, probes, bare, imported)


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44} {value:>14}  {note}".rstrip())


def verdict(value: float, aim: float) -> str:
    return f"(aim < {aim:g}: {'met' if value < aim else 'MISSED'})"


def report(args: argparse.Namespace, run: AgentRun, idle_rate: float, probes: float,
           bare: Memory, imported: str) -> None:
    work = max(0.0, run.cpu_per_cycle_s - idle_rate * args.interval)
    at_aim = (work + idle_rate * AIM_INTERVAL_S) / AIM_INTERVAL_S * 100
    m = run.memory
    entry = "jinsuan agent run" if args.entry == "cli" else "python -m agents.daemon"
    print(f"agent overhead ({entry}): {args.gpus} accelerators (NVML probe over the fake "
          f"pynvml), {args.meters} meters (Modbus TCP, pymodbus servers on loopback), "
          f"{run.samples_per_batch} samples a batch; spool, signed gzip upload and one /metrics "
          f"scrape every cycle; {args.cycles} cycles at {args.interval:g} s measured after "
          f"{args.warmup} warm-up cycles")
    print("CPU (utime+stime from /proc)")
    row(f"per cycle at {args.interval:g} s, as measured", f"{run.cpu_per_cycle_s * 1e3:.2f} ms")
    row("idle between cycles (interval 1 h agent)", f"{idle_rate * 1e3:.3f} ms/s")
    row("per cycle, the cycle's work alone", f"{work * 1e3:.2f} ms")
    if probes:
        row("baseline: the probes' reads alone", f"{probes * 1e3:.2f} ms",
            f"agent/baseline {work / probes:.2f}x")
    else:
        row("baseline: the probes' reads alone", "< 1 tick")
    row(f"at a {AIM_INTERVAL_S:g} s interval", f"{at_aim:.3f} % core",
        verdict(at_aim, AIM_CORE_PERCENT))
    print("memory (/proc status, smaps_rollup; MB = MiB)")
    row("RSS after the last cycle (steady)", f"{m.rss / MB:.1f} MB", verdict(m.rss / MB,
                                                                            AIM_RSS_MB))
    row("RSS peak (VmHWM)", f"{m.hwm / MB:.1f} MB")
    row("RSS growth over the measured cycles", f"{(m.rss - run.rss_after_warmup) / MB:+.1f} MB")
    row("RssAnon / Pss", f"{m.anon / MB:.1f} / {m.pss / MB:.1f} MB")
    row("baseline: Python + the agent's imports, RSS", f"{bare.rss / MB:.1f} MB", imported)
    row("baseline RssAnon / Pss", f"{bare.anon / MB:.1f} / {bare.pss / MB:.1f} MB")
    row("agent/baseline RSS", f"{m.rss / bare.rss:.2f}x",
        f"the running agent adds {(m.rss - bare.rss) / MB:.1f} MB "
        f"({(m.anon - bare.anon) / MB:.1f} MB anonymous)")


if __name__ == "__main__":
    main()
