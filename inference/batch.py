"""Batch registration of a ReMIND2Reg folder: the ``remind2reg register`` command's engine.

Pairs are grouped by case (one US image, one or two MR sequences) so that a method can use
ceT1 and T2 together; one displacement file is still written per pair.

Batch policy (:func:`register_folder`):

* **Per-case isolation.** A case that fails (bad input, a method error) does not stop the
  batch unless ``on_error="fail"``. ``"skip"`` writes nothing for it; ``"identity"`` writes the
  zero field (the initial alignment) and records ``"fallback": "identity"`` and the error in
  ``timings.json``. The returned :class:`BatchSummary` lists every failure.
* **Per-pair isolation.** A problem of one pair (a json entry naming a missing file, a moving
  image without its ``_0000``, a corrupt ceT1 beside a valid T2) fails that pair alone; the
  other sequence of its case is still registered.
* **One run per output folder.** A lock file (:mod:`remind2reg.inference.io.lock`) with the
  owner's pid and host; a second run waits (``lock_wait_s``) or refuses; a stale lock of a
  dead process is taken over. Taking it is also the check that the folder is writable.
* **No partial outputs.** Every file is written atomically; temporary files that a killed run
  left are removed at the start (only those whose process is gone).
* **Resume.** With ``resume=True`` a pair whose output exists and reads back as a valid field
  of the right shape is not redone (an unreadable one is); ``timings.json`` keeps its entry.
* **Determinism.** Python, numpy and torch are seeded with ``seed`` before every case, and on
  the CPU torch runs its deterministic algorithms: the same input and seed give bit-identical
  fields, whatever cases came before (so a resumed run equals a full one).
* **GPU memory.** A case that runs out of CUDA memory is retried on the CPU, with a warning.
* **Initial transforms** (``init_transforms``, a folder): each case starts from the transform
  file named after its ultrasound (:mod:`remind2reg.inference.io.transform_files`). A case
  whose file is missing, ambiguous or unreadable fails alone, like any bad input; the file
  used is recorded in ``timings.json`` (``init_transform``). Checked before anything is
  written: the folder exists, and the method can start from a transform.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import random
import resource
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.device import set_deterministic_algorithms
from remind2reg.inference.errors import InputError, UsageError
from remind2reg.inference.io.atomic import atomic_path, remove_stale_partials
from remind2reg.inference.io.cases import load_fixed, load_moving
from remind2reg.inference.io.dataset import Discovery, PairProblem, RegistrationPair, discover
from remind2reg.inference.io.displacement import read_displacement, write_displacement
from remind2reg.inference.io.lock import folder_lock
from remind2reg.inference.io.nifti import Image, read_header
from remind2reg.inference.io.timings import PairRecord, pair_entries, write_timings
from remind2reg.inference.io.transform_files import check_init_folder, find_init_transform, read_fixed2moving
from remind2reg.inference.methods import make_method
from remind2reg.inference.methods.base import Method, MethodResult
from remind2reg.inference.settings import ON_ERROR_POLICIES

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip", "identity"]  # the names of settings.ON_ERROR_POLICIES
TIMING_NOTES = ("sector_fraction",)  # notes of the method copied into each pair's timings entry
PAIR_NOTES = (
    "confidence",
    "evidence",
    "decision",
    "result_gain",
    "result_evidence",
)  # per-sequence notes ("<name>_<mod>") copied likewise


@dataclass(frozen=True)
class Failure:
    """A failure of one pair or of a whole case, the error, and what the batch did about it."""

    case: str | None
    outputs: tuple[str, ...]  # the output files concerned (empty when no name is known)
    error: str
    input_error: bool  # True for an invalid or unreadable input (InputError)
    action: str  # "stopped the batch", "skipped (no output)", "wrote the identity field", ...

    def describe(self) -> str:
        where = f"case {self.case}" if self.case else "input"
        files = f" ({', '.join(self.outputs)})" if self.outputs else ""
        return f"{where}{files}: {self.action}: {self.error}"


@dataclass
class BatchSummary:
    """What :func:`register_folder` did: fields written, failures, pairs kept by ``resume``."""

    records: list[PairRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    not_attempted: list[str] = field(default_factory=list)  # cases after a failure with on_error="fail"

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def input_errors_only(self) -> bool:
        """True when every failure is an invalid input (the CLI then exits with code 3)."""
        return bool(self.failures) and all(f.input_error for f in self.failures)

    def describe(self) -> str:
        """A few lines for the end of a run."""
        written = sum(r.fallback is None for r in self.records)
        cases = {f.case for f in self.failures}
        pairs = sum(max(1, len(f.outputs)) for f in self.failures)
        lines = [
            f"{written} fields registered, {len(self.resumed)} kept from an earlier run (--resume), "
            f"{len(cases)} cases failed ({pairs} pairs)"
        ]
        lines += [f"  {f.describe()}" for f in self.failures]
        if self.not_attempted:
            lines.append(f"  not attempted after the failure: cases {', '.join(self.not_attempted)}")
        return "\n".join(lines)


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed Python, numpy and torch; on the CPU also make torch use deterministic algorithms.

    CUDA is not made deterministic: several CUDA kernels (grid sampling backward, for one)
    have no deterministic version, and with deterministic algorithms on they raise, so a caller's
    own setting is switched off for a CUDA run. The previous setting is restored on exit.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global generator any library may use
    torch.manual_seed(seed)
    previous = torch.are_deterministic_algorithms_enabled()
    set_deterministic_algorithms(device == "cpu")
    try:
        yield
    finally:
        set_deterministic_algorithms(previous)


@dataclass
class Engine:
    """A registration method by name, on a device, with a CPU fallback for CUDA out-of-memory."""

    name: str
    config: RegistrationConfig | None = None
    device: str = "cpu"
    seed: int = 0
    method: Method | None = field(default=None, init=False, repr=False)  # built on first use
    cpu_fallback: Method | None = field(default=None, init=False, repr=False)

    def __call__(
        self,
        fixed: Image,
        moving: dict[str, Image],
        case: str,
        init_fixed2moving: NDArray[np.float64] | None = None,
    ) -> tuple[MethodResult, str]:
        """Run the method on one case (from ``init_fixed2moving`` when given); returns its result
        and the device it ran on."""
        if self.method is None:
            self.method = make_method(self.name, self.config, self.device)
        try:
            with seeded(self.seed, self.device):
                return self.method(fixed, moving, init_fixed2moving), self.device
        except torch.cuda.OutOfMemoryError as exc:
            if self.device == "cpu":
                raise
            log.warning(
                "Case %s: out of GPU memory on %s (%s); retrying this case on the CPU",
                case,
                self.device,
                str(exc).splitlines()[0],
            )
        torch.cuda.empty_cache()
        if self.cpu_fallback is None:
            self.cpu_fallback = make_method(self.name, self.config, "cpu")
        with seeded(self.seed, "cpu"):
            return self.cpu_fallback(fixed, moving, init_fixed2moving), "cpu"


@dataclass(frozen=True)
class CaseJob:
    """One case to register: all its pairs (the method sees every moving image, so that a joint
    registration is the same with or without ``resume``) and the outputs still to write."""

    pairs: tuple[RegistrationPair, ...]
    todo: tuple[RegistrationPair, ...]
    init_dir: Path | None = None  # the folder of initial transforms, when the batch has one

    @property
    def case(self) -> str:
        return self.pairs[0].case


@dataclass
class CaseOutcome:
    """What running one :class:`CaseJob` produced: records of the files written, and failures."""

    case: str | None
    records: list[PairRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed_outputs(self) -> set[str]:
        return {name for f in self.failures for name in f.outputs}


def _message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"


def write_identity_fields(
    outputs: list[str], fixed: Path, case: str, output_dir: Path, error: str, elapsed_s: float
) -> list[PairRecord]:
    """The zero field (the initial alignment) for ``outputs``, on the grid of the US ``fixed``.

    Only the US's header is needed. Raises :class:`InputError` when even that is unreadable:
    then no field of the right grid can be written.
    """
    shape, vox2world = read_header(fixed, case)
    zero = np.zeros((*shape[:3], 3), dtype=np.float32)
    records = []
    for name in outputs:
        write_displacement(output_dir / name, zero, vox2world, shape[:3])
        records.append(PairRecord(name, {}, elapsed_s, len(outputs), fallback="identity", error=error))
    return records


def handle_failure(
    case: str | None,
    outputs: list[str],
    fixed: Path | None,
    exc: Exception,
    output_dir: Path,
    on_error: OnError,
    elapsed_s: float = 0.0,
) -> tuple[Failure, list[PairRecord]]:
    """Log a failure of ``outputs`` and apply ``on_error``; returns it and any identity records.

    ``fixed``: the case's US (an identity field needs its grid), None when unknown.
    """
    input_error = isinstance(exc, InputError)
    message = _message(exc)
    # An invalid input needs no traceback; anything else might be a bug and gets one.
    log.error("Case %s failed: %s", case, message, exc_info=None if input_error else exc)
    records: list[PairRecord] = []
    if on_error == "fail":
        action = "stopped the batch"
    elif on_error == "identity" and outputs and fixed is not None:
        try:
            records = write_identity_fields(outputs, fixed, case or "?", output_dir, message, elapsed_s)
            action = "wrote the identity field"
            log.warning("Case %s: wrote the zero field (initial alignment) for %s", case, ", ".join(outputs))
        except InputError as header_exc:
            action = f"skipped (no output; no identity field either: {header_exc})"
    elif on_error == "identity" and outputs:
        action = "skipped (no output; no ultrasound to take the grid of an identity field from)"
    else:
        action = "skipped (no output)"
    if not records:  # a result of an earlier run must not pass for one of this run
        for name in outputs:
            stale = output_dir / name
            if stale.is_file():
                log.warning("Case %s: removing %s, left by an earlier run", case, stale)
                stale.unlink()
    return Failure(case, tuple(outputs), message, input_error, action), records


def _load_moving(
    job: CaseJob, fixed: Image, outcome: CaseOutcome, output_dir: Path, on_error: OnError
) -> dict[str, Image]:
    """The moving images of a case that load; a pair whose image does not fails alone (in ``outcome``)."""
    moving = {}
    for p in job.pairs:
        try:
            moving[p.moving_name.modality] = load_moving(p, fixed)
        except InputError as exc:
            if p in job.todo:
                failure, records = handle_failure(
                    job.case, [p.output_name], p.fixed, exc, output_dir, on_error
                )
                outcome.failures.append(failure)
                outcome.records += records
            else:  # kept by --resume: its field stays, and the case goes on without it
                log.warning("Case %s: %s", job.case, exc)
    return moving


def _write_fields(result: MethodResult, todo: list[RegistrationPair], fixed: Image, output_dir: Path) -> None:
    """Write the fields of ``todo``; a field shared by several sequences is compressed once."""
    for shared in result.shared:
        first: Path | None = None
        for p in (p for p in todo if p.moving_name.modality in shared.modalities):
            target = output_dir / p.output_name
            if first is None:
                write_displacement(target, shared.field, fixed.vox2world, fixed.shape)
                first = target
            else:
                with atomic_path(target) as tmp:
                    shutil.copyfile(first, tmp)


def _pair_notes(result: MethodResult, pair: RegistrationPair) -> dict:
    """The method's notes that go into ``pair``'s timings entry (the guard's, of its sequence)."""
    mod = pair.moving_name.modality
    notes = {k: result.notes[k] for k in TIMING_NOTES if k in result.notes}
    notes.update({k: result.notes[f"{k}_{mod}"] for k in PAIR_NOTES if f"{k}_{mod}" in result.notes})
    return notes


def register_case(job: CaseJob, output_dir: Path, engine: Engine, on_error: OnError) -> CaseOutcome:
    """Register the pairs of one case and write one field per pair still to do (atomically).

    Any failure is handled by ``on_error`` and returned, never raised: a failure of the US or
    of the method fails every pair still to do; a moving image that cannot be read fails its
    pair only, and the case is registered with the others.
    """
    t0 = time.perf_counter()
    outcome = CaseOutcome(job.case)
    extra: dict[str, str] = {}
    try:
        init = None
        if job.init_dir is not None:
            init_path = find_init_transform(job.init_dir, job.pairs[0].fixed, job.case)
            init, extra["init_transform"] = read_fixed2moving(init_path, job.case), str(init_path)
        fixed = load_fixed(job.pairs[0])
        moving = _load_moving(job, fixed, outcome, output_dir, on_error)
        todo = [p for p in job.todo if p.output_name not in outcome.failed_outputs]
        if not todo:
            return outcome
        load_s = time.perf_counter() - t0
        result, device = engine(fixed, moving, job.case, init)
        t1 = time.perf_counter()
        _write_fields(result, todo, fixed, output_dir)
    except Exception as exc:  # per-case isolation: any failure of one case is reported, not fatal
        pending = [p.output_name for p in job.todo if p.output_name not in outcome.failed_outputs]
        elapsed = time.perf_counter() - t0
        failure, records = handle_failure(
            job.case, pending, job.pairs[0].fixed, exc, output_dir, on_error, elapsed
        )
        outcome.failures.append(failure)
        outcome.records += records
        return outcome
    stages = {"load": load_s, **result.stages, "write": time.perf_counter() - t1}
    total = time.perf_counter() - t0
    outcome.records += [
        PairRecord(p.output_name, stages, total, len(todo), device, extra={**extra, **_pair_notes(result, p)})
        for p in todo
    ]
    timing = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    log.info(
        "Case %s (%s): %.1f s [%s]", job.case, ", ".join(p.label.split()[1] for p in todo), total, timing
    )
    return outcome


def is_finished(pair: RegistrationPair, output_dir: Path) -> bool:
    """True when ``pair``'s output exists and reads back as a finite field on the fixed grid."""
    target = output_dir / pair.output_name
    if not target.is_file():
        return False
    try:
        shape, _ = read_header(pair.fixed, pair.case)
        read_displacement(target, expected_shape=shape)
    except InputError as exc:
        log.warning(
            "Case %s: redoing %s, the existing file is not a valid field (%s)", pair.case, target.name, exc
        )
        return False
    return True


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_memory_mb() -> float | None:
    """Peak CUDA memory allocated by torch in this process, or None when CUDA was not used."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def save_timings(
    output_dir: Path,
    records: list[PairRecord],
    method: str,
    device: str,
    kept: dict[str, dict] | None = None,
    extra: dict | None = None,
) -> None:
    """``timings.json``: run metadata and one entry per output (``kept``: entries of resumed pairs)."""
    entries = dict(kept or {})
    entries.update({r.output: r.to_json() for r in records})
    pairs = {name: entries[name] for name in sorted(entries)}  # the same file whatever the finishing order
    gpu_mb = peak_gpu_memory_mb()
    meta = {
        "method": method,
        "device": device,
        "host": platform.node(),
        "peak_memory_mb": peak_memory_mb(),
        **({"peak_gpu_memory_mb": gpu_mb} if gpu_mb is not None else {}),
        **(extra or {}),
    }
    write_timings(output_dir, meta, pairs)


def group_by_case(pairs: list[RegistrationPair]) -> list[list[RegistrationPair]]:
    groups: dict[Path, list[RegistrationPair]] = defaultdict(list)
    for p in pairs:
        groups[p.fixed].append(p)
    return list(groups.values())


def plan_jobs(
    pairs: list[RegistrationPair], output_dir: Path, resume: bool, init_dir: Path | None = None
) -> tuple[list[CaseJob], dict[str, dict], list[str]]:
    """The jobs of the batch, and with ``resume`` the timings entries and names of the finished
    outputs that are kept (an output that exists but does not read back as a valid field is redone)."""
    earlier = pair_entries(output_dir) if resume else {}
    jobs, kept, resumed = [], {}, []
    for group in group_by_case(pairs):
        todo = tuple(p for p in group if not (resume and is_finished(p, output_dir)))
        for p in group:
            if p not in todo:
                resumed.append(p.output_name)
                kept[p.output_name] = earlier.get(p.output_name, {"resumed": True})
        if todo:
            jobs.append(CaseJob(tuple(group), todo, init_dir))
        else:
            log.info("Case %s: already done, skipped (--resume)", group[0].case)
    return jobs, kept, resumed


def problem_outcomes(problems: list[PairProblem], output_dir: Path, on_error: OnError) -> list[CaseOutcome]:
    """The problems found while reading the folder, each failed alone under ``on_error``."""
    outcomes = []
    for q in problems:
        failure, records = handle_failure(
            q.case, [q.output] if q.output else [], q.fixed, q.error, output_dir, on_error
        )
        outcomes.append(CaseOutcome(q.case, records, [failure]))
    return outcomes


def find_work(input_dir: str | Path, modalities: tuple[str, ...]) -> Discovery:
    """The pairs to register and the problems of single pairs; raises :class:`InputError` (before
    anything is written) when the folder holds no registrable pair at all."""
    found = discover(input_dir, modalities)
    if not found.pairs:
        listed = "; ".join(str(q.error) for q in found.problems)
        raise InputError(f"no registrable pair: {listed}", path=input_dir)
    return found


@dataclass
class BatchRun:
    """The state of one batch: where it writes, its settings, and what it has done so far."""

    output_dir: Path
    method: str
    device: str
    on_error: OnError
    kept: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    summary: BatchSummary = field(default_factory=BatchSummary)

    def add(self, outcome: CaseOutcome) -> None:
        """Record an outcome and rewrite ``timings.json``."""
        self.summary.records += outcome.records
        self.summary.failures += outcome.failures
        save_timings(self.output_dir, self.summary.records, self.method, self.device, self.kept, self.extra)

    def stops_after(self, outcome: CaseOutcome) -> bool:
        return bool(outcome.failures) and self.on_error == "fail"


def register_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    method: str = "convex-adam",
    modalities: tuple[str, ...] = ("0001", "0002"),
    device: str = "cpu",
    config: RegistrationConfig | None = None,
    progress: bool = True,
    on_error: OnError = "fail",
    resume: bool = False,
    seed: int = 0,
    lock_wait_s: float = 0.0,
    scheduler: str | None = None,
    threads: int | None = None,
    init_transforms: str | Path | None = None,
) -> BatchSummary:
    """Register every pair found in ``input_dir``; one displacement file per pair in ``output_dir``.

    ``on_error`` says what a failure does: ``"fail"`` stops the batch (finished cases keep
    their files), ``"skip"`` writes nothing for the failed pairs and goes on, ``"identity"``
    writes the zero field, records it in ``timings.json`` and goes on. Failures are returned
    in the summary, not raised. Raised: :class:`InputError` for a missing input folder, one
    without any registrable pair, or an output folder that is not writable;
    :class:`~remind2reg.inference.io.lock.FolderBusyError` when another run holds the folder.

    ``scheduler`` (``local``, ``local:N`` or a Dask scheduler address) runs the cases as Dask
    tasks (:mod:`remind2reg.inference.distributed`); None runs them here, one after another.
    ``threads`` sets torch's CPU threads per case (fields depend on it: float reductions).
    ``init_transforms``: a folder with one initial transform per case, named after its
    ultrasound (:mod:`remind2reg.inference.io.transform_files`); it replaces the global stage
    (:class:`UsageError` for a method or config that cannot start from one, an
    :class:`InputError` for a missing folder, both before anything is written).
    """
    if on_error not in ON_ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_POLICIES)}, not {on_error!r}")
    if method == "identity":
        log.warning(
            "Method 'identity': the output fields are zero (the initial alignment), not a registration."
        )
    found = find_work(input_dir, modalities)
    init_dir = Path(init_transforms) if init_transforms is not None else None
    if init_dir is not None:
        check_init_method(method, config)
        check_init_folder(init_dir, {p.fixed for p in found.pairs})
    output_dir = prepare_output(output_dir)
    with folder_lock(output_dir, lock_wait_s):
        remove_stale_partials(output_dir)
        jobs, kept, resumed = plan_jobs(found.pairs, output_dir, resume, init_dir)
        log.info(
            "Registering %d pairs (%d cases) from %s into %s with %s on %s (on error: %s%s)",
            sum(len(j.todo) for j in jobs), len(jobs), input_dir, output_dir, method, device, on_error,
            ", resuming" if resume else "",
        )  # fmt: skip
        extra = {"on_error": on_error, "seed": seed, "threads": threads, "scheduler": scheduler}
        if init_dir is not None:
            extra["init_transforms"] = str(init_dir)
        run = BatchRun(output_dir, method, device, on_error, kept, extra)
        run.summary.resumed = resumed
        if scheduler is None:
            with torch_threads(threads):
                run_serial(run, jobs, found.problems, Engine(method, config, device, seed), progress)
        else:
            from remind2reg.inference.distributed import EngineSpec, run_distributed

            spec = EngineSpec(method, config, device, seed, threads)
            run_distributed(run, jobs, found.problems, spec, scheduler, progress)
    gpu = peak_gpu_memory_mb()
    log.info("Peak memory %.0f MB%s", peak_memory_mb(), f", GPU {gpu:.0f} MB" if gpu is not None else "")
    (log.info if run.summary.ok else log.warning)("Summary: %s", run.summary.describe())
    return run.summary


INIT_METHODS = ("convex-adam", "niftyreg-rigid", "niftyreg-affine")  # those that can start from a transform


def check_init_method(method: str, config: RegistrationConfig | None) -> None:
    """:class:`UsageError` unless ``method`` with ``config`` can start from an initial transform:
    ``reg_aladin`` can (``-inaff``), and ``convex-adam`` with no global stage of its own
    (``[affine] method = "none"``), since the given transform takes that stage's place."""
    if method not in INIT_METHODS:
        raise UsageError(
            f"initial transforms need one of the methods {', '.join(INIT_METHODS)}, not {method!r}"
        )
    if method != "convex-adam":
        return
    affine = (config or RegistrationConfig()).affine.method
    if affine != "none":
        raise UsageError(
            f'an initial transform replaces the global stage: it needs [affine] method = "none" '
            f"in the config, not {affine!r}"
        )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` for the block (unchanged when None)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_serial(
    run: BatchRun, jobs: list[CaseJob], problems: list[PairProblem], engine: Engine, progress: bool
) -> None:
    """The folder's problems, then its cases one after another, in this process."""
    for outcome in problem_outcomes(problems, run.output_dir, run.on_error):
        run.add(outcome)
        if run.stops_after(outcome):
            run.summary.not_attempted = [j.case for j in jobs]
            return
    for index, job in enumerate(tqdm(jobs, desc="register", unit="case", disable=not progress)):
        outcome = register_case(job, run.output_dir, engine, run.on_error)
        run.add(outcome)
        if run.stops_after(outcome):
            run.summary.not_attempted = [j.case for j in jobs[index + 1 :]]
            return


def prepare_output(output_dir: str | Path) -> Path:
    """The output folder, created if needed; :class:`InputError` naming it when that fails."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})", path=output_dir) from exc
    if not output_dir.is_dir():
        raise InputError("the output path exists and is not a folder", path=output_dir)
    return output_dir
