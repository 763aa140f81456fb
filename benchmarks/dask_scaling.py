"""Throughput of ``remind2reg register`` in-process and on Dask local clusters; prints a table.

    python benchmarks/dask_scaling.py --data demo/data [--cases 4] [--repeats 2]

Rows (each a whole ``remind2reg register`` process, fresh output folder, wall-clock seconds):

* ``in-process, 1 case``, ``--scheduler local:1, 1 case``: the overhead of the Dask path
  (starting a LocalCluster, shipping the task) against the default run on the same case;
* ``in-process``, ``local:1``, ``local:2`` on all the cases: cases per minute. The torch
  threads per case are the machine's cores divided by the workers (``--threads``), so the
  cores are used the same way in every row and only the parallelism over cases differs.

The median over ``--repeats`` runs is shown with the min-max range: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remind2reg.inference.io.dataset import find_pairs


def subset(data: Path, cases: int, into: Path) -> Path:
    """A flat folder with the images of the first ``cases`` cases of ``data``."""
    into.mkdir(parents=True, exist_ok=True)
    pairs = find_pairs(data)
    keep = sorted({p.case for p in pairs})[:cases]
    for p in pairs:
        if p.case in keep:
            for src in (p.fixed, p.moving):
                if not (into / src.name).exists():
                    shutil.copy(src, into / src.name)
    return into


def run(data: Path, options: list[str]) -> float:
    """Wall seconds of one ``remind2reg register`` process into a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="dask-scaling-"))
    cmd = [sys.executable, "-m", "remind2reg", "-q", "register", "--input", str(data), "--output", str(out)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--device", "cpu", *options], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def measure(data: Path, options: list[str], repeats: int) -> tuple[float, float, float]:
    times = [run(data, options) for _ in range(repeats)]
    return statistics.median(times), min(times), max(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="ReMIND2Reg folder (e.g. demo/data)")
    parser.add_argument("--cases", type=int, default=4, help="cases for the throughput rows")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="dask-scaling-data-"))
    one, many = subset(args.data, 1, work / "one"), subset(args.data, args.cases, work / "many")
    n = len({p.case for p in find_pairs(many)})
    rows = [
        ("in-process, 1 case", one, 1, ["--threads", str(cores)]),
        ("--scheduler local:1, 1 case", one, 1, ["--scheduler", "local:1", "--threads", str(cores)]),
        (f"in-process, {n} cases", many, n, ["--threads", str(cores)]),
        (f"--scheduler local:1, {n} cases", many, n, ["--scheduler", "local:1", "--threads", str(cores)]),
        (
            f"--scheduler local:2, {n} cases",
            many,
            n,
            ["--scheduler", "local:2", "--threads", str(max(1, cores // 2))],
        ),
    ]
    print(f"machine: {cores} cores; data {args.data}; median of {args.repeats} runs (min-max)")
    print("| run | wall s | cases / min |\n|---|---|---|")
    for name, data, count, options in rows:
        median, lo, hi = measure(data, options, args.repeats)
        print(f"| {name} | {median:.1f} ({lo:.1f}-{hi:.1f}) | {60 * count / median:.2f} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
