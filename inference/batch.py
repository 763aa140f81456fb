"""Batch registration of a ReMIND2Reg folder: the ``remind2reg register`` command's engine.

Pairs are grouped by case (one US image, one or two MR sequences) so that a method can use
ceT1 and T2 together; one displacement file is still written per pair.

Batch policy (:func:`register_folder`):

* **Per-case isolation.** A case that fails (bad input, a method error) does not stop the
  batch unless ``on_error="fail"``. ``"skip"`` writes nothing for it; ``"identity"`` writes the
  zero field (the initial alignment) and records ``"fallback": "identity"`` and the error in
  ``timings.json``. The returned :class:`BatchSummary` lists every failure.
* **No partial outputs.** Every file is written atomically; stale temporary files of an
  interrupted run are removed at the start.
* **Resume.** With ``resume=True`` a pair whose output exists and reads back as a valid field
  of the right shape is not redone (an unreadable one is); ``timings.json`` keeps its entry.
* **Determinism.** Python, numpy and torch are seeded with ``seed`` before every case, and on
  the CPU torch runs its deterministic algorithms: the same input and seed give bit-identical
  fields, whatever cases came before (so a resumed run equals a full one).
* **GPU memory.** A case that runs out of CUDA memory is retried on the CPU, with a warning.
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
from tqdm import tqdm

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import atomic_path, remove_stale_partials
from remind2reg.inference.io.cases import load_fixed, load_moving
from remind2reg.inference.io.dataset import RegistrationPair, find_pairs
from remind2reg.inference.io.displacement import read_displacement, write_displacement
from remind2reg.inference.io.nifti import Image, read_header
from remind2reg.inference.io.timings import PairRecord, pair_entries, write_timings
from remind2reg.inference.methods import make_method
from remind2reg.inference.methods.base import Method, MethodResult
from remind2reg.inference.settings import ON_ERROR_POLICIES

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip", "identity"]  # the names of settings.ON_ERROR_POLICIES


@dataclass(frozen=True)
class CaseFailure:
    """A case that failed, the error, and what the batch did about it."""

    case: str
    outputs: tuple[str, ...]
    error: str
    input_error: bool  # True for an invalid or unreadable input (InputError)
    action: str  # "stopped the batch", "skipped (no output)" or "wrote the identity field"


@dataclass
class BatchSummary:
    """What :func:`register_folder` did: fields written, failures, pairs kept by ``resume``."""

    records: list[PairRecord] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
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
        lines = [
            f"{written} fields registered, {len(self.resumed)} kept from an earlier run (--resume), "
            f"{len(self.failures)} cases failed"
        ]
        for f in self.failures:
            lines.append(f"  case {f.case} ({', '.join(f.outputs)}): {f.action}: {f.error}")
        if self.not_attempted:
            lines.append(f"  not attempted after the failure: cases {', '.join(self.not_attempted)}")
        return "\n".join(lines)


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed Python, numpy and torch; on the CPU also make torch use deterministic algorithms.

    CUDA is not made deterministic: several CUDA kernels (grid sampling backward, for one)
    have no deterministic version. The previous deterministic setting is restored on exit.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global generator any library may use
    torch.manual_seed(seed)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(device == "cpu" or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@dataclass
class Engine:
    """A registration method by name, on a device, with a CPU fallback for CUDA out-of-memory."""

    name: str
    config: RegistrationConfig | None = None
    device: str = "cpu"
    seed: int = 0
    method: Method | None = field(default=None, init=False, repr=False)  # built on first use
    cpu_fallback: Method | None = field(default=None, init=False, repr=False)

    def __call__(self, fixed: Image, moving: dict[str, Image], case: str) -> tuple[MethodResult, str]:
        """Run the method on one case; returns its result and the device it ran on."""
        if self.method is None:
            self.method = make_method(self.name, self.config, self.device)
        try:
            with seeded(self.seed, self.device):
                return self.method(fixed, moving), self.device
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
            return self.cpu_fallback(fixed, moving), "cpu"


def register_case(
    pairs: list[RegistrationPair],
    output_dir: Path,
    engine: Engine,
    outputs: set[str] | None = None,
) -> list[PairRecord]:
    """Register the pairs sharing one fixed image; write one field per pair (atomically).

    ``outputs`` restricts the files written (``--resume``); the method still sees every
    moving image of the case, so that a joint registration gives the same fields.
    """
    t0 = time.perf_counter()
    case = pairs[0].case
    fixed = load_fixed(pairs[0])
    moving = {p.moving_name.modality: load_moving(p, fixed) for p in pairs}
    load_s = time.perf_counter() - t0
    result, device = engine(fixed, moving, case)
    t1 = time.perf_counter()
    todo = [p for p in pairs if outputs is None or p.output_name in outputs]
    for shared in result.shared:  # a field shared by several sequences is compressed once
        first: Path | None = None
        for p in (p for p in todo if p.moving_name.modality in shared.modalities):
            target = output_dir / p.output_name
            if first is None:
                write_displacement(target, shared.field, fixed.vox2world, fixed.shape)
                first = target
            else:
                with atomic_path(target) as tmp:
                    shutil.copyfile(first, tmp)
    stages = {"load": load_s, **result.stages, "write": time.perf_counter() - t1}
    total = time.perf_counter() - t0
    return [PairRecord(p.output_name, stages, total, len(todo), device=device) for p in todo]


def write_identity_fields(
    pairs: list[RegistrationPair], output_dir: Path, error: str, elapsed_s: float
) -> list[PairRecord]:
    """The zero field (the initial alignment) for every pair of a failed case, recorded as such.

    Only the fixed image's header is needed. Raises :class:`InputError` when even that is
    unreadable: then no field of the right grid can be written.
    """
    shape, vox2world = read_header(pairs[0].fixed, pairs[0].case)
    zero = np.zeros((*shape[:3], 3), dtype=np.float32)
    records = []
    for p in pairs:
        write_displacement(output_dir / p.output_name, zero, vox2world, shape[:3])
        records.append(PairRecord(p.output_name, {}, elapsed_s, len(pairs), fallback="identity", error=error))
    return records


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
    pairs = dict(kept or {})
    pairs.update({r.output: r.to_json() for r in records})
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


def _handle_failure(
    group: list[RegistrationPair], output_dir: Path, exc: Exception, on_error: OnError, elapsed_s: float
) -> tuple[CaseFailure, list[PairRecord]]:
    """Log a failed case and apply ``on_error``; returns the failure and any identity records."""
    case, names = group[0].case, tuple(p.output_name for p in group)
    input_error = isinstance(exc, InputError)
    message = str(exc) if input_error else f"{type(exc).__name__}: {exc}"
    # An invalid input needs no traceback; anything else might be a bug and gets one.
    log.error("Case %s failed: %s", case, message, exc_info=None if input_error else exc)
    records: list[PairRecord] = []
    if on_error == "fail":
        action = "stopped the batch"
    elif on_error == "identity":
        try:
            records = write_identity_fields(group, output_dir, message, elapsed_s)
            action = "wrote the identity field"
            log.warning("Case %s: wrote the zero field (initial alignment) for %s", case, ", ".join(names))
        except InputError as header_exc:
            action = f"skipped (no output; no identity field either: {header_exc})"
    else:
        action = "skipped (no output)"
    if not records:  # a result of an earlier run must not pass for one of this run
        for name in names:
            stale = output_dir / name
            if stale.is_file():
                log.warning("Case %s: removing %s, left by an earlier run", case, stale)
                stale.unlink()
    return CaseFailure(case, names, message, input_error, action), records


@dataclass(frozen=True)
class CaseJob:
    """One case to register: all its pairs (the method sees every moving image, so that a joint
    registration is the same with or without ``resume``) and the outputs still to write."""

    pairs: tuple[RegistrationPair, ...]
    todo: tuple[RegistrationPair, ...]

    @property
    def case(self) -> str:
        return self.pairs[0].case


@dataclass
class CaseOutcome:
    """What running one :class:`CaseJob` produced: records of the files written, and its failure."""

    case: str
    records: list[PairRecord] = field(default_factory=list)
    failure: CaseFailure | None = None


def plan_jobs(
    cases: list[list[RegistrationPair]], output_dir: Path, resume: bool
) -> tuple[list[CaseJob], dict[str, dict], list[str]]:
    """The jobs of the batch, and with ``resume`` the timings entries and names of the finished
    outputs that are kept (an output that exists but does not read back as a valid field is redone)."""
    earlier = pair_entries(output_dir) if resume else {}
    jobs, kept, resumed = [], {}, []
    for group in cases:
        todo = tuple(p for p in group if not (resume and is_finished(p, output_dir)))
        for p in group:
            if p not in todo:
                resumed.append(p.output_name)
                kept[p.output_name] = earlier.get(p.output_name, {"resumed": True})
        if todo:
            jobs.append(CaseJob(tuple(group), todo))
        else:
            log.info("Case %s: already done, skipped (--resume)", group[0].case)
    return jobs, kept, resumed


def run_job(job: CaseJob, engine: Engine, output_dir: Path, on_error: OnError) -> CaseOutcome:
    """Register one case and write its fields; a failure is handled by ``on_error``, never raised."""
    t0 = time.perf_counter()
    try:
        records = register_case(
            list(job.pairs), output_dir, engine, outputs={p.output_name for p in job.todo}
        )
    except Exception as exc:  # per-case isolation: any failure of one case is reported, not fatal
        failure, records = _handle_failure(
            list(job.todo), output_dir, exc, on_error, time.perf_counter() - t0
        )
        return CaseOutcome(job.case, records, failure)
    stages = ", ".join(f"{k} {v:.1f}" for k, v in records[0].stages.items())
    labels = ", ".join(p.label.split()[1] for p in job.todo)
    log.info("Case %s (%s): %.1f s [%s]", job.case, labels, records[0].case_total_s, stages)
    return CaseOutcome(job.case, records)


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
) -> BatchSummary:
    """Register every pair found in ``input_dir``; one displacement file per pair in ``output_dir``.

    ``on_error`` says what a failing case does: ``"fail"`` stops the batch (finished cases
    keep their files), ``"skip"`` writes nothing for it and goes on, ``"identity"`` writes the
    zero field, records it in ``timings.json`` and goes on. Case failures are returned in the
    summary, not raised; a missing or empty input folder still raises :class:`InputError`.
    """
    if on_error not in ON_ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_POLICIES)}, not {on_error!r}")
    engine = Engine(method, config, device, seed)
    if method == "identity":
        log.warning(
            "Method 'identity': the output fields are zero (the initial alignment), not a registration."
        )
    pairs = find_pairs(input_dir, modalities)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output_dir)
    cases = group_by_case(pairs)
    log.info(
        "Registering %d pairs (%d cases) from %s into %s with %s on %s (on error: %s%s)",
        len(pairs), len(cases), input_dir, output_dir, method, device, on_error, ", resuming" if resume else "",
    )  # fmt: skip
    jobs, kept, resumed = plan_jobs(cases, output_dir, resume)
    summary = BatchSummary(resumed=resumed)
    extra = {"on_error": on_error, "seed": seed}
    for index, job in enumerate(tqdm(jobs, desc="register", unit="case", disable=not progress)):
        outcome = run_job(job, engine, output_dir, on_error)
        summary.records += outcome.records
        if outcome.failure is not None:
            summary.failures.append(outcome.failure)
        save_timings(output_dir, summary.records, method, device, kept, extra)
        if outcome.failure is not None and on_error == "fail":
            summary.not_attempted = [j.case for j in jobs[index + 1 :]]
            break
    gpu = peak_gpu_memory_mb()
    log.info("Peak memory %.0f MB%s", peak_memory_mb(), f", GPU {gpu:.0f} MB" if gpu is not None else "")
    (log.info if summary.ok else log.warning)("Summary: %s", summary.describe())
    return summary
