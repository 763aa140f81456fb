"""Registration benchmark: run methods on a ReMIND2Reg folder with landmarks; print per-family tables.

    python benchmarks/registration_benchmark.py --data data/standard --methods identity convex-adam \\
        niftyreg-rigid peer:convexadam-baseline [--split held-out] [--scheduler local:2] [--threads 1]

Methods
-------
* ``<name>`` (e.g. ``identity``, ``convex-adam``): ours, run as
  ``python -m remind2reg register --method <name> --device cpu --threads T [--config FILE]``.
* ``<name>@<preset>`` (e.g. ``convex-adam@mcbo_multilevel``): ours with
  ``--config configs/<preset>.toml``, scored as a separate row.
* ``peer:<peer>-<preset>`` (e.g. ``peer:convexadam-baseline``): an adapter in
  ``benchmarks/peers/`` run as ``python <adapter> --preset <preset>``.

A unit of work is one (method, case): the method sees every sequence of the case, as in a real
run. Serially (default) a method runs in one subprocess over the cases it has no result for;
with ``--scheduler local[:N]|ADDRESS`` every (method, case) is a Dask task running that
subprocess on one case into its own folder, and the client merges the results. Either way the
per-pair cache is the same (a pair whose field and ``timings.json`` entry exist is not run
again unless ``--rerun``), so an interrupted sweep resumes, and with the same ``--threads`` the
fields, hence the tables, are the same (torch's float reductions depend on the thread count).
Results made under other settings (the method's settings are recorded in its folder; changing
a default changes them) are never reused: they are moved aside to ``stale-<time>/``, or deleted
with ``--discard-stale``. A 256^3 field is about 200 MB, so delete those folders regularly.

Families and halves
-------------------
The standard set (``benchmarks/make_standard_set.py``) has a ``split.json`` giving each case
its simulator family and its half (``tuning``: choose settings there; ``held-out``: report
there). ``--split`` selects the half; tables are printed per family and over all families.

Measurements
------------
* TRE, TRE30 (0.3 quantile over pairs), SDlogJ, folding: the challenge's evaluator, cached per
  pair in ``<results>/<method>/metrics_cache.json`` keyed by the field file's size and mtime;
* change: mean TRE over mean initial TRE of the same pairs, minus 1 (negative is better);
  worse: the share of pairs whose TRE exceeds their initial TRE;
* s/pair: ``total_s`` of each pair in the method's ``timings.json`` (load + register + write);
* peak RAM: the maximum resident set size of the subprocess that produced the pair
  (``os.wait4``'s ``ru_maxrss``): the whole process at its worst moment.
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
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from remind2reg.evaluation.evaluate import PairResult, evaluate
from remind2reg.evaluation.paired import PairedComparison, case_means, paired_comparison
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.dataset import DATASET_JSON, RegistrationPair, find_pairs, landmark_path
from remind2reg.inference.io.timings import merge_timings, pair_entries
from remind2reg.inference.settings import MODALITY_CHOICES

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("registration_benchmark")

RUNS_FILE = "benchmark_runs.json"
CACHE_FILE = "metrics_cache.json"
SPLIT_FILE = "split.json"
PEERS = {
    "convexadam": REPO / "benchmarks" / "peers" / "convexadam_package.py",
}
DEFAULT_DATA = REPO / "data" / "standard"
DEFAULT_RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class CaseInfo:
    family: str
    split: str
    nearly_aligned: bool = False


def case_info(data: Path) -> dict[str, CaseInfo]:
    """Family and half of each case, from ``split.json`` (empty when there is none)."""
    path = data / SPLIT_FILE
    if not path.is_file():
        return {}
    cases = json.loads(path.read_text(encoding="utf-8")).get("cases", {})
    return {c: CaseInfo(v["family"], v["split"], bool(v.get("nearly_aligned"))) for c, v in cases.items()}


def by_case(pairs: list[RegistrationPair]) -> dict[str, list[RegistrationPair]]:
    out: dict[str, list[RegistrationPair]] = defaultdict(list)
    for p in pairs:
        out[p.case].append(p)
    return dict(out)


# ----------------------------------------------------------------------------- running methods


def method_dir(results: Path, method: str) -> Path:
    return results / method.replace(":", "_").replace("/", "_")


def method_command(
    method: str, input_dir: Path, output_dir: Path, config: Path | None, threads: int
) -> list[str]:
    """The subprocess command line that registers every pair of ``input_dir`` into ``output_dir``."""
    if method.startswith("peer:"):
        peer, _, preset = method[len("peer:") :].partition("-")
        if peer not in PEERS or not preset:
            raise SystemExit(
                f"unknown peer method {method!r}; known peers: {', '.join(PEERS)} (peer:<name>-<preset>)"
            )
        cmd = [sys.executable, str(PEERS[peer]), "--preset", preset, "--threads", str(threads)]
    else:
        # "<method>@<preset>": our method with configs/<preset>.toml (its own results folder).
        name, _, preset = method.partition("@")
        if preset and config is None:
            config = REPO / "configs" / f"{preset}.toml"
            if not config.is_file():
                raise SystemExit(f"unknown preset {preset!r}: {config} does not exist")
        cmd = [sys.executable, "-m", "remind2reg", "-q", "register", "--method", name, "--device", "cpu"]
        cmd += ["--threads", str(threads)]
    cmd += ["--input", str(input_dir), "--output", str(output_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


SETTINGS_FILE = "settings.json"


def method_settings(method: str, config: Path | None, modalities: str = "both") -> dict:
    """What a method's results depend on besides the code: its name and its effective settings.

    Our pipeline methods: the whole resolved :class:`RegistrationConfig` (defaults included, so
    a change of a default shows) and ``modalities``, the sequences registered together: under
    a fusion the ceT1 field of a run with the T2 is not that of a run with the ceT1 alone, so
    a ``--modalities ceT1`` run must not reuse a ``both`` run's ceT1 fields; ``niftyreg-*``:
    its ``[affine.aladin]`` settings, all it reads (each sequence on its own); ``identity``:
    nothing; peers: their preset and config file text.
    """
    from remind2reg.inference.config import RegistrationConfig

    name, _, preset = method.partition("@")
    if config is None and preset and not method.startswith("peer:"):
        config = REPO / "configs" / f"{preset}.toml"
    if method.startswith("peer:"):
        return {"method": method, "config": config.read_text() if config else None}
    settings = (RegistrationConfig.from_file(config) if config else RegistrationConfig()).to_dict()
    if name == "identity":
        return {"method": name}
    if name.startswith("niftyreg-"):
        return {"method": name, "aladin": settings["affine"]["aladin"]}
    return {"method": name, "settings": settings, "modalities": modalities}


def retire_stale(mdir: Path, settings: dict, discard: bool = False) -> None:
    """Move results made under other settings aside (``stale-<time>/``) instead of reusing them.

    With ``discard`` they are deleted instead, together with earlier ``stale-*`` folders (a 256^3
    field is about 200 MB, a half of the standard set about 6 GB a method).
    """
    recorded = _read_json(mdir / SETTINGS_FILE, None)
    current = json.loads(json.dumps(settings, default=str))
    results = list(mdir.glob("disp_*.nii.gz"))
    if discard:
        for old in mdir.glob("stale-*"):
            shutil.rmtree(old)
    if results and recorded != current:  # no record at all: made by an older harness, unknown
        paths = [p for p in [*results, mdir / "timings.json", mdir / CACHE_FILE] if p.exists()]
        size_gb = sum(p.stat().st_size for p in paths) / 1e9
        if discard:
            for path in paths:
                path.unlink()
            print(f"[{mdir.name}] settings changed since these results were made: deleted them "
                  f"({size_gb:.1f} GB), running again", flush=True)  # fmt: skip
        else:
            stale = mdir / f"stale-{dt.datetime.now():%Y%m%d-%H%M%S}"
            stale.mkdir()
            for path in paths:
                os.replace(path, stale / path.name)
            print(f"[{mdir.name}] settings changed since these results were made: moved to {stale.name}/ "
                  f"({size_gb:.1f} GB; --discard-stale deletes instead), running again", flush=True)  # fmt: skip
    write_text_atomic(mdir / SETTINGS_FILE, json.dumps(current, indent=2, sort_keys=True))


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
    return {name for name in pair_entries(mdir) if (mdir / name).is_file()}


@dataclass(frozen=True)
class Job:
    """One subprocess: ``method`` on ``pairs`` into ``run_dir`` (its own folder)."""

    method: str
    pairs: tuple[RegistrationPair, ...]
    run_dir: str
    config: str | None
    threads: int
    time_limit: float | None


def execute(job: Job) -> dict:
    """Run a job's subprocess (here or on a Dask worker); returns its record (nothing merged yet)."""
    run_dir = Path(job.run_dir)
    input_dir = write_pair_list(run_dir / "input", list(job.pairs))
    out_dir = run_dir / "out"
    cmd = method_command(
        job.method, input_dir, out_dir, Path(job.config) if job.config else None, job.threads
    )
    log_path = run_dir / "log.txt"
    t0, timed_out = time.perf_counter(), False
    env = dict(os.environ)
    if job.method.startswith("peer:convexadam-baseline-rigid"):  # project the baseline's fields, if run
        env["REMIND2REG_BASELINE_FIELDS"] = str(Path(job.run_dir).parents[2] / "peer_convexadam-baseline")
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if job.time_limit else 0)
            if pid:
                break
            if not timed_out and time.perf_counter() - t0 > (job.time_limit or float("inf")):
                timed_out = True  # stop it; the pairs it finished are kept by the merge
                proc.terminate()
            time.sleep(1.0)
    done = [name for name in pair_entries(out_dir) if (out_dir / name).is_file()]
    return {
        "command": cmd,
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "pairs": done,
        "run_dir": str(run_dir),
    }


def merge(mdir: Path, record: dict) -> None:
    """Move a finished run's fields into ``mdir``, merge its timings, and log the run (client side)."""
    run_dir = Path(record["run_dir"])
    out_dir = run_dir / "out"
    for name in record["pairs"]:
        os.replace(out_dir / name, mdir / name)
    merge_timings(mdir, out_dir, record["pairs"])
    runs = _read_json(mdir / RUNS_FILE, {"runs": []})
    runs["runs"].append({**record, "log": str((run_dir / "log.txt").relative_to(mdir))})
    write_text_atomic(mdir / RUNS_FILE, json.dumps(runs, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    status = "ok" if record["returncode"] == 0 else f"FAILED (exit {record['returncode']})"
    print(f"[{mdir.name}] {status}: {len(record['pairs'])} pair(s) in {record['wall_s']:.0f} s, "
          f"peak RSS {record['peak_rss_mb'] / 1024:.2f} GiB", flush=True)  # fmt: skip
    if record["returncode"] != 0:
        tail = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print("\n".join(f"    {line}" for line in tail), flush=True)


def plan(
    method: str, todo: list[RegistrationPair], mdir: Path, config: Path | None, args, per_case: bool
) -> list[Job]:
    """The jobs of one method: one for all its cases, or one per case (``per_case``)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    groups = list(by_case(todo).values()) if per_case else [todo]
    return [
        Job(
            method,
            tuple(g),
            str(mdir / "runs" / f"{stamp}-{g[0].case if per_case else 'all'}"),
            str(config) if config else None,
            args.threads,
            args.time_limit,
        )
        for g in groups
    ]


def run_jobs(jobs: list[tuple[Path, Job]], scheduler: str | None) -> None:
    """Execute the jobs here, one after another, or as Dask tasks; merge each as it finishes."""
    if scheduler is None:
        for mdir, job in jobs:
            print(f"[{job.method}] running {len(job.pairs)} pair(s)", flush=True)
            merge(mdir, execute(job))
        return
    from distributed import Client, LocalCluster

    from remind2reg.inference.distributed import each_completed
    from remind2reg.inference.settings import parse_scheduler

    kind, workers = parse_scheduler(scheduler)
    cluster = (
        LocalCluster(n_workers=workers or 1, threads_per_worker=1, dashboard_address=None)
        if kind == "local"
        else None
    )
    try:
        with Client(cluster or scheduler, timeout=10) as client:
            if __name__ != "__main__":
                # Imported as a module (tests, other scripts): tasks refer to ``execute`` by
                # module name, which the workers can import only once they have this file.
                client.upload_file(__file__)
            futures = {client.submit(execute, job, pure=False, retries=1): mdir for mdir, job in jobs}
            print(f"{len(futures)} (method, case) tasks on {scheduler}", flush=True)
            for future in each_completed(client, futures, local=cluster is not None):
                merge(futures[future], future.result())
    finally:
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------- scoring


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def score(method: str, pairs: list[RegistrationPair], mdir: Path) -> dict[str, PairResult]:
    """Challenge metrics of the pairs that have a result in ``mdir`` (cached per pair), by output name."""
    finished = finished_pairs(mdir)
    available = [p for p in pairs if p.output_name in finished]
    cache = _read_json(mdir / CACHE_FILE, {})
    runtimes = {k: v.get("total_s") for k, v in pair_entries(mdir).items()}
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
        report = evaluate(
            write_pair_list(mdir / "eval_input", todo), mdir, modalities=MODALITY_CHOICES["both"]
        )
        for p, r in zip(todo, report.pairs, strict=True):
            r.runtime_s = runtimes.get(p.output_name)
            results[p.output_name] = r
            cache[p.output_name] = {**asdict(r), "file_key": _file_key(mdir / p.output_name)}
        write_text_atomic(mdir / CACHE_FILE, json.dumps(cache, indent=2))
    return results


def pair_peaks(mdir: Path) -> dict[str, float]:
    """Peak RSS (MB) of the run that produced each pair (the latest run wins)."""
    peaks: dict[str, float] = {}
    for run in _read_json(mdir / RUNS_FILE, {"runs": []})["runs"]:
        for name in run["pairs"]:
            peaks[name] = run["peak_rss_mb"]
    return peaks


# ----------------------------------------------------------------------------- tables


@dataclass
class Row:
    group: str  # family, or "all"
    method: str
    pairs: int
    tre0: float  # mean initial TRE of the same pairs
    tre: float
    tre30: float
    change: float  # tre / tre0 - 1
    worse: float  # share of pairs whose TRE exceeds the initial one
    sdlogj: float
    folding: float
    seconds: float
    peak_gib: float


def make_row(group: str, method: str, results: list[PairResult], peaks: dict[str, float]) -> Row:
    if not results:
        return Row(group, method, 0, *([float("nan")] * 9))
    tre0 = float(np.mean([r.tre_initial for r in results]))
    tre = float(np.mean([r.tre for r in results]))
    times = [r.runtime_s for r in results if r.runtime_s is not None]
    peak = [peaks[output_of(r)] for r in results if output_of(r) in peaks]
    return Row(
        group, method, len(results), tre0, tre, float(np.quantile([r.tre for r in results], 0.3)), tre / tre0 - 1,
        float(np.mean([r.tre > r.tre_initial for r in results])), float(np.mean([r.sdlogj for r in results])),
        float(np.mean([r.folding_percent for r in results])), float(np.mean(times)) if times else float("nan"),
        max(peak) / 1024.0 if peak else float("nan"),
    )  # fmt: skip


def output_of(r: PairResult) -> str:
    fixed, moving = r.key.split("<--")
    return f"disp_{fixed}_{moving}.nii.gz"


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


HEAD = [
    "family",
    "method",
    "pairs",
    "TRE0",
    "TRE",
    "TRE30",
    "change",
    "worse",
    "SDlogJ",
    "fold %",
    "s/pair",
    "peak GiB",
]


def cells(row: Row) -> list[str]:
    return [
        row.group, row.method, str(row.pairs), _fmt(row.tre0, ".2f"), _fmt(row.tre, ".2f"), _fmt(row.tre30, ".2f"),
        _fmt(100 * row.change, "+.0f") + ("%" if np.isfinite(row.change) else ""),
        _fmt(100 * row.worse, ".0f") + ("%" if np.isfinite(row.worse) else ""),
        _fmt(row.sdlogj, ".3f"), _fmt(row.folding, ".3f"), _fmt(row.seconds, ".1f"), _fmt(row.peak_gib, ".2f"),
    ]  # fmt: skip


def common_pairs(
    methods: list[str], scored: dict[str, dict[str, PairResult]], pairs: list[RegistrationPair]
) -> list[RegistrationPair]:
    """The pairs every method has a score for (tables compare methods on the same pairs)."""
    return [p for p in pairs if all(p.output_name in scored[m] for m in methods)]


def build_rows(
    methods: list[str], scored: dict[str, dict[str, PairResult]], peaks: dict[str, dict[str, float]],
    pairs: list[RegistrationPair], info: dict[str, CaseInfo],
) -> list[Row]:  # fmt: skip
    """One row per (family, method) and per method over all families, on the pairs every method has."""
    common = common_pairs(methods, scored, pairs)
    families = sorted({info[p.case].family for p in common if p.case in info})
    groups = [(f, [p for p in common if p.case in info and info[p.case].family == f]) for f in families]
    groups.append(("all", common))
    return [
        make_row(group, m, [scored[m][p.output_name] for p in members], peaks[m])
        for group, members in groups
        for m in methods
    ]


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = (
        [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        if rows
        else [len(h) for h in head]
    )

    def fmt(c: list[str]) -> str:
        return "  ".join(
            x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths, strict=True))
        )

    return "\n".join([fmt(head), "-" * (sum(widths) + 2 * (len(widths) - 1)), *(fmt(r) for r in rows)])


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    align = ["---", "---"] + ["---:"] * (len(head) - 2)
    return "\n".join("| " + " | ".join(c) + " |" for c in [head, align, *rows])


def per_pair(methods: list[str], scored: dict[str, dict[str, PairResult]], pairs: list[RegistrationPair],
             info: dict[str, CaseInfo]) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    head = ["pair", "family", "TRE0", *methods]
    rows = []
    for p in pairs:
        first = next((scored[m][p.output_name] for m in methods if p.output_name in scored[m]), None)
        if first is None:
            continue
        family = info[p.case].family if p.case in info else "-"
        values = [
            _fmt(scored[m][p.output_name].tre if p.output_name in scored[m] else np.nan, ".2f")
            for m in methods
        ]
        rows.append([p.key, family, f"{first.tre_initial:.2f}", *values])
    return head, rows


@dataclass(frozen=True)
class PairedRow:
    group: str
    method: str
    comparison: PairedComparison


def build_paired_rows(
    methods: list[str], baseline: str, scored: dict[str, dict[str, PairResult]], pairs: list[RegistrationPair],
    info: dict[str, CaseInfo],
) -> list[PairedRow]:  # fmt: skip
    """Each method against ``baseline`` on the case means of the pairs every method has, per family and over all."""
    common = common_pairs(methods, scored, pairs)
    family = {p.case: info[p.case].family if p.case in info else "-" for p in common}
    case_of = {p.output_name: p.case for p in common}
    means = {
        m: case_means({p.output_name: scored[m][p.output_name].tre for p in common}, case_of) for m in methods
    }
    groups = [(f, [c for c in means[baseline] if family[c] == f]) for f in sorted(set(family.values()))]
    groups.append(("all", list(means[baseline])))
    return [
        PairedRow(
            group, m, paired_comparison([means[m][c] for c in cases], [means[baseline][c] for c in cases])
        )
        for group, cases in groups
        if cases
        for m in methods
        if m != baseline
    ]


PAIRED_HEAD = ["family", "method", "cases", "mean diff", "95% CI", "better", "worse", "same", "p"]


def paired_cells(row: PairedRow) -> list[str]:
    c = row.comparison
    return [
        row.group, row.method, str(c.n), f"{c.mean_diff:+.3f}", f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]",
        str(c.better), str(c.worse), str(c.ties), f"{c.p_value:.3g}",
    ]  # fmt: skip


def paired_notes(baseline: str) -> str:
    return (
        f"Paired against {baseline}: per case, the mean TRE over its pairs, method minus {baseline} (mm; "
        "negative: the method is better); 95% CI: percentile bootstrap over cases; p: two-sided Wilcoxon "
        "signed-rank over the cases that differ. Decision rule for defaults (docs/benchmark.md): a candidate "
        "replaces the default only when it is better over all tuning cases at p < 0.05."
    )


NOTES = (
    "TRE, TRE0 (initial), TRE30 (0.3 quantile over pairs) in mm, challenge formula; change = TRE / TRE0 - 1; "
    "worse = share of pairs with TRE > TRE0; SDlogJ with the official +3; fold % = voxels with det J <= 0; "
    "s/pair from the method's timings.json; peak GiB = max RSS of the subprocess that made the pair. Rows "
    "use the pairs every listed method has."
)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="ReMIND2Reg folder with landmarks (split.json)"
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["identity"],
        help="ours by name[@preset], peers as peer:<name>-<preset>",
    )
    ap.add_argument(
        "--split", default="all", choices=["all", "tuning", "held-out"], help="half of the standard set"
    )
    ap.add_argument("--families", nargs="+", help="only these simulator families")
    ap.add_argument("--modalities", default="both", choices=sorted(MODALITY_CHOICES))
    ap.add_argument("--max-cases", type=int, help="only the first N cases (after the other filters)")
    ap.add_argument(
        "--config", nargs="+", default=[], metavar="METHOD=FILE", help="--config FILE passed to that method"
    )
    ap.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results root (one folder per method)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads per run (results depend on it)",
    )
    ap.add_argument(
        "--scheduler", help="run (method, case) tasks on Dask: local, local:N or a scheduler address"
    )
    ap.add_argument("--rerun", action="store_true", help="run every selected pair again")
    ap.add_argument(
        "--discard-stale",
        action="store_true",
        help="delete results made under other settings (and old stale-* folders) instead of moving them aside",
    )
    ap.add_argument(
        "--time-limit", type=float, help="seconds per run; then it is stopped and its finished pairs kept"
    )
    ap.add_argument("--no-run", action="store_true", help="only score the results that exist")
    ap.add_argument(
        "--baseline", help="also compare every other method with this one, paired per case (one of --methods)"
    )
    ap.add_argument("--markdown", type=Path, help="also write the tables as markdown")
    ap.add_argument("--json", type=Path, help="also write all numbers as JSON")
    return ap.parse_args(argv)


def select_pairs(args: argparse.Namespace, info: dict[str, CaseInfo]) -> list[RegistrationPair]:
    pairs = [
        p
        for p in find_pairs(args.data, MODALITY_CHOICES[args.modalities])
        if landmark_path(p.fixed, args.data)
    ]
    if args.split != "all":
        pairs = [p for p in pairs if p.case in info and info[p.case].split == args.split]
    if args.families:
        pairs = [p for p in pairs if p.case in info and info[p.case].family in args.families]
    if args.max_cases:
        keep = sorted({p.case for p in pairs})[: args.max_cases]
        pairs = [p for p in pairs if p.case in keep]
    return pairs


def report(
    args: argparse.Namespace, rows: list[Row], pp: tuple[list[str], list[list[str]]], scored: dict,
    paired: list[PairedRow],
) -> None:  # fmt: skip
    table = [cells(r) for r in rows]
    title = f"Data: {args.data}  split: {args.split}  modalities: {args.modalities}  threads: {args.threads}"
    print(f"\n{title}\n{text_table(HEAD, table)}\n{NOTES}")
    md = [title, "", markdown_table(HEAD, table), "", NOTES, ""]
    if paired:
        ptable = [paired_cells(r) for r in paired]
        print(f"\n{text_table(PAIRED_HEAD, ptable)}\n{paired_notes(args.baseline)}")
        md += [markdown_table(PAIRED_HEAD, ptable), "", paired_notes(args.baseline), ""]
    print(f"\nPer-pair TRE (mm):\n{text_table(*pp)}")
    md += ["Per-pair TRE (mm):", "", markdown_table(*pp), ""]
    if args.markdown:
        write_text_atomic(args.markdown, "\n".join(md))
    if args.json:
        out = {"data": str(args.data), "split": args.split, "rows": [asdict(r) for r in rows],
               "paired": {"baseline": args.baseline, "rows": [asdict(r) for r in paired]},
               "pairs": {m: {k: asdict(v) for k, v in s.items()} for m, s in scored.items()}}  # fmt: skip
        write_text_atomic(args.json, json.dumps(out, indent=2, default=float))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline is not None and args.baseline not in args.methods:
        raise SystemExit(f"--baseline {args.baseline} is not one of --methods {args.methods}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    info = case_info(args.data)
    pairs = select_pairs(args, info)
    configs = {m: Path(f) for m, _, f in (c.rpartition("=") for c in args.config)}
    jobs = []
    for m in args.methods:
        mdir = method_dir(args.results, m)
        mdir.mkdir(parents=True, exist_ok=True)
        retire_stale(mdir, method_settings(m, configs.get(m), args.modalities), args.discard_stale)
        done = set() if args.rerun else finished_pairs(mdir)
        todo = [p for p in pairs if p.output_name not in done]
        if todo and not args.no_run:
            jobs += [
                (mdir, j) for j in plan(m, todo, mdir, configs.get(m), args, per_case=bool(args.scheduler))
            ]
    run_jobs(jobs, args.scheduler)
    scored = {m: score(m, pairs, method_dir(args.results, m)) for m in args.methods}
    peaks = {m: pair_peaks(method_dir(args.results, m)) for m in args.methods}
    rows = build_rows(args.methods, scored, peaks, pairs, info)
    paired = build_paired_rows(args.methods, args.baseline, scored, pairs, info) if args.baseline else []
    report(args, rows, per_pair(args.methods, scored, pairs, info), scored, paired)
    return 0


if __name__ == "__main__":
    sys.exit(main())
