"""Bytes and CPU per sample of the kept evidence, by codec: the agents' gzip against xz presets.

Builds the signed bodies agents send (one simulated site's fleet, ``--batches`` batches of six
10 s cycles each), compresses each body on its own as ``report_bodies`` keeps it, and prints
bytes per sample carried and CPU per sample for gzip level 6 (the baseline: what agents send)
and xz presets 1, 3, 6 and 9, with each one's ratio to the baseline.

    python bench/evidence_codecs.py [--accelerators 256] [--batches 12]
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

import argparse
import gzip
import lzma
import time
from datetime import UTC, datetime, timedelta

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from jinsuan.contract.wire import Batch, Inventory, Series


def bodies(accelerators: int, batches: int) -> tuple[list[bytes], int]:
    """Signed-body JSON as an agent builds it, and the samples they carry."""
    site = SimulatedSite(SimulatedSiteConfig(seed=1, fleet={
        "NVIDIA H800": accelerators // 2, "Ascend910B3": accelerators - accelerators // 2}))
    start = datetime(2026, 12, 1, tzinfo=UTC)
    out, samples, cycle = [], 0, 0
    for seq in range(1, batches + 1):
        points: dict[tuple[str, str], list[tuple[int, float]]] = {}
        inventory = None
        for _ in range(6):
            now = start + timedelta(seconds=10 * cycle)
            cycle += 1
            reading = site.read(now)
            ms = int(now.timestamp() * 1000)
            for p in reading.points:
                points.setdefault((p.metric, p.device), []).append((ms, p.value))
            inventory = Inventory(racks=reading.racks, accelerators=reading.accelerators,
                                  meters=reading.meters, edge=reading.edge)
        batch = Batch(agent_id="a_bench", seq=seq, created_at=now, interval_s=10.0,
                      inventory=inventory,
                      series=[Series(metric=m, device=d, points=pts)
                              for (m, d), pts in points.items()])
        out.append(batch.model_dump_json().encode())
        samples += batch.sample_count()
    return out, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerators", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    raw, samples = bodies(args.accelerators, args.batches)
    codecs = [("gzip level 6 (baseline)", lambda b: gzip.compress(b, 6, mtime=0))]
    codecs += [(f"xz preset {p}", lambda b, p=p: lzma.compress(b, preset=p))
               for p in (1, 3, 6, 9)]
    print(f"{len(raw)} bodies, {samples:,} samples, {sum(map(len, raw)) / samples:.1f} B of"
          " JSON a sample")
    base = None
    for name, pack in codecs:
        began = time.process_time()
        size = sum(len(pack(body)) for body in raw)
        cpu = time.process_time() - began
        base = base or size
        print(f"  {name:24} {size / samples:5.2f} B/sample  {cpu / samples * 1e6:5.2f} µs/sample"
              f"  ratio {size / base:.2f}")


if __name__ == "__main__":
    main()
