"""Registration benchmark: run methods on a ReMIND2Reg folder with landmarks and print one table.

    python benchmarks/registration_benchmark.py --methods identity convex-adam \\
        peer:convexadam-baseline peer:convexadam-defaults [--modalities ceT1] [--max-pairs 8]

Methods
-------
* ``<name>`` (e.g. ``identity``, ``convex-adam``): ours, run as
  ``python -m remind2reg register --method <name> --device cpu [--config FILE]``.
* ``<name>@<preset>`` (e.g. ``convex-adam@mcbo_multilevel``): ours with
  ``--config configs/<preset>.toml``, scored as a separate row.
* ``peer:<peer>-<preset>`` (e.g. ``peer:convexadam-baseline``): an adapter in
  ``benchmarks/peers/`` run as ``python <adapter> --preset <preset>``.

Each method runs in its own subprocess, on the pairs it has no result for yet, into
``<results>/<method>/`` (``:`` becomes ``_`` in folder names). A run's input is a small dataset
json listing exactly those pairs (absolute paths), so ``--max-pairs`` and the modality choice
need no copy of the data. Results are reused: a pair whose ``disp_*.nii.gz`` and ``timings.json``
entry exist is not run again unless ``--rerun`` is given, so expensive peers run once and a later
call with other options only fills the gaps. ``--no-run`` scores what exists (partial tables
while long jobs run); ``--time-limit S`` stops a method's subprocess after S seconds and keeps
the pairs it finished.

Measurements
------------
* seconds per pair: ``total_s`` of each pair in the method's ``timings.json`` (load + register
  + write, as the method itself measured it), averaged over the pairs;
* peak memory: the maximum resident set size of the method's subprocess, from the rusage that
  ``os.wait4`` returns for that child (``ru_maxrss``, KiB on Linux): the whole process
  (interpreter, torch, images) at its worst moment, not a delta. A pair's peak is the peak of
  the run that produced it; the table shows the maximum over the pairs scored;
* TRE, TRE30, SDlogJ, folding: ``evaluation.evaluate.evaluate`` (challenge-identical), cached
  per pair in ``<results>/<method>/metrics_cache.json`` keyed by the field file's size and mtime.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from remind2reg.evaluation.evaluate import PairResult, evaluate
from remind2reg.evaluation.metrics import official_aggregates
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.dataset import DATASET_JSON, RegistrationPair, find_pairs, landmark_path
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import header_spacing

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("registration_benchmark")

TIMINGS_FILE = "timings.json"
RUNS_FILE = "benchmark_runs.json"
CACHE_FILE = "metrics_cache.json"
MODALITY_CHOICES = {"both": ("0001", "0002"), "ceT1": ("0001",), "T2": ("0002",)}
PEERS = {"convexadam": REPO / "benchmarks" / "peers" / "convexadam_package.py"}
DEFAULT_DATA = REPO / "data" / "synth_shared"
DEFAULT_RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------- methods


def method_dir(results: Path, method: str) -> Path:
    return results / method.replace(":", "_").replace("/", "_")


def method_command(method: str, input_dir: Path, output_dir: Path, config: Path | None) -> list[str]:
    """The subprocess command line that registers every pair of ``input_dir`` into ``output_dir``."""
    if method.startswith("peer:"):
        peer, _, preset = method[len("peer:") :].partition("-")
        if peer not in PEERS or not preset:
            raise SystemExit(
                f"unknown peer method {method!r}; known peers: {', '.join(PEERS)} (peer:<name>-<preset>)"
            )
        cmd = [sys.executable, str(PEERS[peer]), "--preset", preset]
    else:
        # "<method>@<preset>": our method with configs/<preset>.toml (its own results folder).
        name, _, preset = method.partition("@")
        if preset and config is None:
            config = REPO / "configs" / f"{preset}.toml"
            if not config.is_file():
                raise SystemExit(f"unknown preset {preset!r}: {config} does not exist")
        cmd = [sys.executable, "-m", "remind2reg", "register", "--method", name, "--device", "cpu"]
    cmd += ["--input", str(input_dir), "--output", str(output_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


def write_pair_list(folder: Path, pairs: list[RegistrationPair]) -> Path:
    """A dataset json listing exactly ``pairs`` (absolute paths) as ``registration_val``."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": "ReMIND2Reg benchmark subset",
        "registration_val": [{"fixed": str(p.fixed), "moving": str(p.moving)} for p in pairs],
    }
    write_text_atomic(folder / DATASET_JSON, json.dumps(meta, indent=2))
    return folder


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def finished_pairs(mdir: Path) -> set[str]:
    """Output names with both a field and a ``timings.json`` entry in ``mdir``."""
    timed = set(_read_json(mdir / TIMINGS_FILE, {}).get("pairs", {}))
    return {name for name in timed if (mdir / name).is_file()}


def run_method(
    method: str,
    pairs: list[RegistrationPair],
    mdir: Path,
    config: Path | None,
    time_limit: float | None = None,
) -> dict:
    """Run ``method`` on ``pairs`` in a subprocess; merge its outputs into ``mdir``; return the run record."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = mdir / "runs" / stamp
    input_dir = write_pair_list(run_dir / "input", pairs)
    out_dir = run_dir / "out"
    cmd = method_command(method, input_dir, out_dir, config)
    log_path = run_dir / "log.txt"
    print(f"[{method}] running {len(pairs)} pair(s): {' '.join(cmd)}\n[{method}] log: {log_path}", flush=True)
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if time_limit else 0)
            if pid:
                break
            if not timed_out and time.perf_counter() - t0 > time_limit:
                timed_out = True  # stop it; the pairs it finished are kept below
                print(f"[{method}] time limit of {time_limit:.0f} s reached: stopping it", flush=True)
                proc.terminate()
            time.sleep(1.0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    peak_mb = usage.ru_maxrss / 1024.0
    # Keep every pair the subprocess finished (field + timings entry), even if it failed later.
    run_timings = _read_json(out_dir / TIMINGS_FILE, {})
    done = [name for name in run_timings.get("pairs", {}) if (out_dir / name).is_file()]
    merged = _read_json(mdir / TIMINGS_FILE, {})
    merged_pairs = merged.get("pairs", {})
    for name in done:
        os.replace(out_dir / name, mdir / name)
        merged_pairs[name] = run_timings["pairs"][name]
    merged.update({k: v for k, v in run_timings.items() if k != "pairs"})
    merged["pairs"] = merged_pairs
    write_text_atomic(mdir / TIMINGS_FILE, json.dumps(merged, indent=2))
    record = {
        "started": stamp,
        "command": cmd,
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "peak_rss_mb": peak_mb,
        "pairs": done,
        "log": str(log_path.relative_to(mdir)),
    }
    runs = _read_json(mdir / RUNS_FILE, {"runs": []})
    runs["runs"].append(record)
    write_text_atomic(mdir / RUNS_FILE, json.dumps(runs, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    status_word = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(
        f"[{method}] {status_word}: {len(done)}/{len(pairs)} pair(s) in {wall:.0f} s, "
        f"peak RSS {peak_mb / 1024:.2f} GiB",
        flush=True,
    )
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print("\n".join(f"    {line}" for line in tail), flush=True)
    return record


def pair_peaks(mdir: Path) -> dict[str, float]:
    """Peak RSS (MB) of the run that produced each pair (the latest run wins)."""
    peaks: dict[str, float] = {}
    for run in _read_json(mdir / RUNS_FILE, {"runs": []})["runs"]:
        for name in run["pairs"]:
            peaks[name] = run["peak_rss_mb"]
    return peaks


# ----------------------------------------------------------------------------- scoring


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def score(method: str, pairs: list[RegistrationPair], mdir: Path) -> list[PairResult]:
    """Challenge metrics of the pairs of ``pairs`` that have a result in ``mdir`` (cached per pair)."""
    available = [p for p in pairs if p.output_name in finished_pairs(mdir)]
    cache = _read_json(mdir / CACHE_FILE, {})
    runtimes = {k: v.get("total_s") for k, v in _read_json(mdir / TIMINGS_FILE, {}).get("pairs", {}).items()}
    results: dict[str, PairResult] = {}
    todo = []
    for p in available:
        entry = cache.get(p.output_name)
        if entry and entry.get("file_key") == _file_key(mdir / p.output_name):
            entry = {k: v for k, v in entry.items() if k != "file_key"}
            entry["runtime_s"] = runtimes.get(p.output_name)
            results[p.output_name] = PairResult(**entry)
        else:
            todo.append(p)
    if todo:
        print(f"[{method}] evaluating {len(todo)} pair(s)", flush=True)
        eval_dir = write_pair_list(mdir / "eval_input", todo)
        report = evaluate(eval_dir, mdir, modalities=tuple(MODALITY_CHOICES["both"]))
        for p, r in zip(todo, report.pairs, strict=True):
            results[p.output_name] = r
            cache[p.output_name] = {**asdict(r), "file_key": _file_key(mdir / p.output_name)}
        write_text_atomic(mdir / CACHE_FILE, json.dumps(cache, indent=2))
    return [results[p.output_name] for p in available]


def initial_tre(pairs: list[RegistrationPair], data: Path) -> dict[str, float]:
    """Mean landmark TRE of the zero field per pair (the official formula with u = 0)."""
    out = {}
    for p in pairs:
        fix = read_landmarks_csv(landmark_path(p.fixed, data), p.case)
        mov = read_landmarks_csv(landmark_path(p.moving, data), p.case)
        out[p.key] = float(np.linalg.norm((fix - mov) * header_spacing(p.moving), axis=1).mean())
    return out


@dataclass
class Row:
    method: str
    pairs: str
    tre0: float
    tre: float
    tre30: float
    sdlogj: float
    folding: float
    seconds: float
    peak_gib: float


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def build_rows(
    methods: list[str], scored: dict[str, list[PairResult]], peaks: dict[str, dict[str, float]], tre0: dict
) -> list[Row]:
    n_all = len(tre0)
    agg0 = official_aggregates(list(tre0.values()))
    rows = [
        Row(
            "initial (zero field)",
            f"{n_all}/{n_all}",
            agg0["mean"],
            agg0["mean"],
            agg0["30"],
            0.0,
            0.0,
            np.nan,
            np.nan,
        )
    ]
    for m in methods:
        res = scored.get(m, [])
        if not res:
            rows.append(Row(m, f"0/{n_all}", *([np.nan] * 7)))
            continue
        agg = official_aggregates([r.tre for r in res])
        times = [r.runtime_s for r in res if r.runtime_s is not None]
        mdir_peaks = [peaks[m][_out(r)] for r in res if _out(r) in peaks[m]]
        rows.append(
            Row(
                m,
                f"{len(res)}/{n_all}",
                float(np.mean([r.tre_initial for r in res])),
                agg["mean"],
                agg["30"],
                float(np.mean([r.sdlogj for r in res])),
                float(np.mean([r.folding_percent for r in res])),
                float(np.mean(times)) if times else np.nan,
                max(mdir_peaks) / 1024.0 if mdir_peaks else np.nan,
            )
        )
    return rows


def _out(r: PairResult) -> str:
    fixed, moving = r.key.split("<--")
    return f"disp_{fixed}_{moving}.nii.gz"


SUMMARY_HEAD = [
    "method",
    "pairs",
    "TRE0 same pairs",
    "mean TRE",
    "TRE30",
    "SDlogJ",
    "fold %",
    "s/pair",
    "peak RAM GiB",
]


def summary_cells(row: Row) -> list[str]:
    return [
        row.method,
        row.pairs,
        _fmt(row.tre0, ".3f"),
        _fmt(row.tre, ".3f"),
        _fmt(row.tre30, ".3f"),
        _fmt(row.sdlogj, ".4f"),
        _fmt(row.folding, ".3f"),
        _fmt(row.seconds, ".1f"),
        _fmt(row.peak_gib, ".2f"),
    ]


def per_pair_cells(methods, scored, tre0) -> tuple[list[str], list[list[str]]]:
    head = ["pair", "TRE0", *methods]
    by_method = {m: {r.key: r.tre for r in scored.get(m, [])} for m in methods}
    rows = [
        [key, f"{t0:.3f}", *[_fmt(by_method[m].get(key, np.nan), ".3f") for m in methods]]
        for key, t0 in tre0.items()
    ]
    return head, rows


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([fmt(head), "-" * (sum(widths) + 2 * (len(widths) - 1)), *(fmt(r) for r in rows)])


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(head) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, align, *rows])


NOTES = (
    "TRE/TRE30 in mm (challenge formula; TRE30 = 0.3 quantile over pairs); TRE0 same pairs = initial TRE "
    "of the pairs that method was scored on; SDlogJ with the official +3; fold % = voxels with det J <= 0; "
    "s/pair from the method's timings.json; peak RAM = max RSS of the method's subprocess (os.wait4 ru_maxrss)."
)


# ----------------------------------------------------------------------------- main


def _per_method(values: list[str] | None, cast, what: str) -> tuple[object, dict[str, object]]:
    default, per = None, {}
    for v in values or []:
        if "=" in v:
            name, _, val = v.rpartition("=")
            per[name] = cast(val)
        elif default is None:
            default = cast(v)
        else:
            raise SystemExit(f"{what}: give one default and METHOD=VALUE for the others")
    return default, per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ReMIND2Reg folder with landmarks")
    ap.add_argument(
        "--methods", nargs="+", default=["identity"], help="ours by name, peers as peer:<name>-<preset>"
    )
    ap.add_argument("--modalities", default="both", choices=sorted(MODALITY_CHOICES))
    ap.add_argument("--max-pairs", nargs="+", metavar="N|METHOD=N", help="first N pairs (all methods or one)")
    ap.add_argument("--config", nargs="+", metavar="METHOD=FILE", help="--config FILE passed to that method")
    ap.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results root (one folder per method)"
    )
    ap.add_argument("--rerun", action="store_true", help="run every selected pair again")
    ap.add_argument(
        "--time-limit",
        type=float,
        help="seconds per method run; then its subprocess is stopped and the pairs it finished are kept",
    )
    ap.add_argument("--no-run", action="store_true", help="only score the results that exist")
    ap.add_argument("--markdown", type=Path, help="also write the tables as markdown")
    ap.add_argument("--json", type=Path, help="also write all numbers as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    all_pairs = find_pairs(args.data, MODALITY_CHOICES[args.modalities])
    all_pairs = [p for p in all_pairs if landmark_path(p.fixed, args.data) is not None]
    max_default, max_per = _per_method(args.max_pairs, int, "--max-pairs")
    _, configs = _per_method(args.config, Path, "--config")
    selected: dict[str, list[RegistrationPair]] = {}
    for m in args.methods:
        n = max_per.get(m, max_default)
        selected[m] = all_pairs[:n] if n is not None else all_pairs
    union = [p for p in all_pairs if any(p in sel for sel in selected.values())]

    scored: dict[str, list[PairResult]] = {}
    peaks: dict[str, dict[str, float]] = {}
    for m in args.methods:
        mdir = method_dir(args.results, m)
        mdir.mkdir(parents=True, exist_ok=True)
        done = set() if args.rerun else finished_pairs(mdir)
        todo = [p for p in selected[m] if p.output_name not in done]
        if todo and not args.no_run:
            run_method(m, todo, mdir, configs.get(m), args.time_limit)
        elif not todo:
            print(f"[{m}] reusing {len(selected[m])} finished pair(s) in {mdir}", flush=True)
        scored[m] = score(m, selected[m], mdir)
        peaks[m] = pair_peaks(mdir)

    tre0 = initial_tre(union, args.data)
    rows = build_rows(args.methods, scored, peaks, tre0)
    summary = [summary_cells(r) for r in rows]
    pp_head, pp_rows = per_pair_cells(args.methods, scored, tre0)
    print()
    print(f"Data: {args.data}  modalities: {args.modalities}  pairs: {len(union)}")
    print(text_table(SUMMARY_HEAD, summary))
    print(NOTES)
    print()
    print("Per-pair mean TRE (mm):")
    print(text_table(pp_head, pp_rows))
    if args.markdown:
        md = [
            f"Data: `{args.data}`, modalities: {args.modalities}, pairs: {len(union)}",
            "",
            markdown_table(SUMMARY_HEAD, summary),
            "",
            NOTES,
            "",
            "Per-pair mean TRE (mm):",
            "",
            markdown_table(pp_head, pp_rows),
            "",
        ]
        write_text_atomic(args.markdown, "\n".join(md))
    if args.json:
        out = {
            "data": str(args.data),
            "summary": [asdict(r) for r in rows],
            "pairs": {m: [asdict(r) for r in scored[m]] for m in args.methods},
            "peak_rss_mb": peaks,
        }
        write_text_atomic(args.json, json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
