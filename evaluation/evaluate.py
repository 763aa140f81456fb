"""Scoring a folder of predicted displacement fields against landmark ground truth."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from remind2reg.evaluation.metrics import (
    folding_percent,
    jacobian_determinant,
    official_aggregates,
    sdlogj,
    target_registration_error,
)
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.dataset import MOVING_MODALITIES, RegistrationPair, discover, landmark_path
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import header_spacing, read_header
from remind2reg.inference.io.timings import runtimes as read_runtimes

log = logging.getLogger(__name__)


@dataclass
class PairResult:
    """Metrics of one registration pair (lengths in mm)."""

    key: str  # official key, e.g. "0099_0000<--0099_0001"
    case: str
    moving_modality: str  # "ceT1" or "T2"
    n_landmarks: int
    tre_initial: float  # mean TRE of the zero field
    tre: float  # mean TRE of the prediction
    tre_landmarks: list[float] = field(default_factory=list)
    sdlogj: float = float("nan")
    folding_percent: float = float("nan")
    runtime_s: float | None = None


@dataclass
class EvaluationReport:
    """The scored pairs, and the pairs that could not be scored with the reason (by pair key)."""

    pairs: list[PairResult]
    failures: dict[str, str] = field(default_factory=dict)

    def aggregates(self) -> dict[str, dict[str, float]]:
        """Official aggregates (mean, std, 30 % quantile over pairs) of each metric."""
        out = {
            "TRE_initial": official_aggregates([p.tre_initial for p in self.pairs]),
            "TRE_lm": official_aggregates([p.tre for p in self.pairs]),
            "LogJacDetStd": official_aggregates([p.sdlogj for p in self.pairs]),
            "folding_percent": official_aggregates([p.folding_percent for p in self.pairs]),
        }
        runtimes = [p.runtime_s for p in self.pairs if p.runtime_s is not None]
        if runtimes:
            out["runtime_s"] = official_aggregates(runtimes)
        return out

    def summary(self) -> str:
        """One line: the mean TRE before and after, its relative change, the pairs improved."""
        before = float(np.mean([p.tre_initial for p in self.pairs]))
        after = float(np.mean([p.tre for p in self.pairs]))
        improved = sum(p.tre < p.tre_initial for p in self.pairs)
        worse = sum(p.tre > p.tre_initial for p in self.pairs)
        change = f" ({100 * (after / before - 1):+.0f} %)" if before > 0 else ""
        return (
            f"Summary: mean TRE {before:.2f} -> {after:.2f} mm{change}, "
            f"{improved} of {len(self.pairs)} pairs improved, {worse} made worse"
        )

    def to_json(self) -> dict:
        """JSON in the official layout (``aggregates``, ``cases``) plus our extra fields."""
        cases = {}
        for p in self.pairs:
            cases[p.key] = {
                "TRE_lm": {"mean": p.tre, "detailed": p.tre_landmarks},
                "TRE_initial": {"mean": p.tre_initial, "detailed": p.tre_initial},
                "LogJacDetStd": {"mean": p.sdlogj, "detailed": p.sdlogj},
                "folding_percent": {"mean": p.folding_percent, "detailed": p.folding_percent},
            }
            if p.runtime_s is not None:
                cases[p.key]["runtime_s"] = {"mean": p.runtime_s, "detailed": p.runtime_s}
        out = {"name": "ReMIND2Reg", "aggregates": self.aggregates(), "cases": cases, "eval_version": "2.0"}
        if self.failures:
            out["failures"] = dict(self.failures)  # not scored: missing or invalid field or input
        return out

    def to_csv(self) -> str:
        buffer = io.StringIO()
        names = [k for k in asdict(self.pairs[0]) if k != "tre_landmarks"] if self.pairs else []
        writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for p in self.pairs:
            writer.writerow(asdict(p))
        return buffer.getvalue()

    def table(self) -> str:
        """A plain-text table for the terminal."""
        head = f"{'pair':<24} {'mod':<5} {'n':>3} {'TRE0':>7} {'TRE':>7} {'SDlogJ':>7} {'fold%':>7} {'time s':>7}"
        lines = [head, "-" * len(head)]
        for p in self.pairs:
            rt = f"{p.runtime_s:7.1f}" if p.runtime_s is not None else f"{'-':>7}"
            lines.append(
                f"{p.key:<24} {p.moving_modality:<5} {p.n_landmarks:>3} {p.tre_initial:7.3f} {p.tre:7.3f} "
                f"{p.sdlogj:7.4f} {p.folding_percent:7.3f} {rt}"
            )
        lines.append("-" * len(head))
        if self.pairs:
            agg = self.aggregates()
            rt = agg.get("runtime_s", {}).get("mean")
            rt_s = f"{rt:7.1f}" if rt is not None else f"{'-':>7}"
            lines.append(
                f"{'mean':<24} {'':<5} {'':>3} {agg['TRE_initial']['mean']:7.3f} {agg['TRE_lm']['mean']:7.3f} "
                f"{agg['LogJacDetStd']['mean']:7.4f} {agg['folding_percent']['mean']:7.3f} {rt_s}"
            )
            lines.append(
                f"{'TRE30 (0.3 quantile)':<24} {'':<5} {'':>3} {agg['TRE_initial']['30']:7.3f} "
                f"{agg['TRE_lm']['30']:7.3f}"
            )
        lines.append("TRE0: zero field (initial alignment); TRE, TRE30 in mm; fold%: voxels with det J <= 0")
        if self.pairs:
            lines.append(self.summary())
        if self.failures:
            lines.append(f"NOT SCORED ({len(self.failures)} pairs):")
            lines += [f"  {key}: {message}" for key, message in self.failures.items()]
        return "\n".join(lines)


def _check_inside(points: np.ndarray, shape: tuple[int, ...], path: Path, case: str) -> None:
    low, high = points.min(axis=0), points.max(axis=0)
    if (low < -0.5).any() or (high > np.asarray(shape[:3]) - 0.5).any():
        raise InputError(
            f"landmarks outside the image grid {shape[:3]} (min {low}, max {high})",
            path=path,
            case=case,
        )


def read_pair_landmarks(
    pair: RegistrationPair, data_root: Path
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """The fixed and moving landmarks of ``pair`` (``(N, 3)`` voxel indices of each image), or
    None when either file is missing; raises :class:`InputError` when they do not match or lie
    outside their image grid."""
    case = pair.case
    fix_path, mov_path = landmark_path(pair.fixed, data_root), landmark_path(pair.moving, data_root)
    if fix_path is None or mov_path is None:
        return None
    fix_lms = read_landmarks_csv(fix_path, case)
    mov_lms = read_landmarks_csv(mov_path, case)
    if fix_lms.shape != mov_lms.shape:
        raise InputError(
            f"{len(fix_lms)} fixed but {len(mov_lms)} moving landmarks", path=mov_path, case=case
        )
    fixed_shape, _ = read_header(pair.fixed, case)
    moving_shape, _ = read_header(pair.moving, case)
    _check_inside(fix_lms, fixed_shape, fix_path, case)
    _check_inside(mov_lms, moving_shape, mov_path, case)
    return fix_lms, mov_lms


def evaluate_pair(
    pair: RegistrationPair,
    pred_dir: Path,
    data_root: Path,
    runtime_s: float | None = None,
    disp: NDArray | None = None,
    landmarks: tuple[NDArray, NDArray] | None = None,
) -> PairResult:
    """All metrics of one pair; raises :class:`InputError` on missing or invalid files.

    ``disp``: the pair's field (fixed-grid voxels, fixed -> moving), already read with
    :func:`read_displacement` (else it is read); ``landmarks``: the pair's landmarks, already
    read with :func:`read_pair_landmarks` (else they are read).
    """
    case = pair.case
    if landmarks is None:
        landmarks = read_pair_landmarks(pair, data_root)
    if landmarks is None:
        raise InputError(
            "landmark file not found (expected landmarksTr/<image>.csv)",
            path=pair.moving,
            case=case,
        )
    fix_lms, mov_lms = landmarks
    spacing_mov = header_spacing(pair.moving)
    if disp is None:
        fixed_shape, _ = read_header(pair.fixed, case)
        disp = read_displacement(pred_dir / pair.output_name, expected_shape=fixed_shape)
    tre = target_registration_error(fix_lms, mov_lms, disp, spacing_mov)
    tre0 = np.linalg.norm((fix_lms - mov_lms) * spacing_mov, axis=1)
    jac_det = jacobian_determinant(disp)
    return PairResult(
        key=pair.key,
        case=case,
        moving_modality=MOVING_MODALITIES.get(pair.moving_name.modality, pair.moving_name.modality),
        n_landmarks=len(fix_lms),
        tre_initial=float(tre0.mean()),
        tre=float(tre.mean()),
        tre_landmarks=[float(t) for t in tre],
        sdlogj=sdlogj(jac_det),
        folding_percent=folding_percent(jac_det),
        runtime_s=runtime_s,
    )


def evaluate(
    data_dir: str | Path, pred_dir: str | Path, modalities: tuple[str, ...] = ("0001", "0002")
) -> EvaluationReport:
    """Evaluate every pair of ``data_dir`` that has landmarks.

    Every valid pair is scored; a pair whose field is missing or invalid, or whose images or
    landmarks are, is listed in ``failures`` with the reason (the official evaluator stops at
    the first). Raises :class:`InputError` when no pair can be scored at all.
    """
    data_dir, pred_dir = Path(data_dir), Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError("prediction folder not found", path=pred_dir)
    found = discover(data_dir, modalities)
    failures = {q.output or str(q.error.path): str(q.error) for q in found.problems}
    pairs = [p for p in found.pairs if landmark_path(p.fixed, data_dir) is not None]
    if not pairs and not failures:
        raise InputError("no pair with landmark files (landmarksTr/*.csv) found", path=data_dir)
    runtimes = read_runtimes(pred_dir)
    results = []
    for pair in pairs:
        log.info("Evaluating %s", pair.key)
        try:
            results.append(evaluate_pair(pair, pred_dir, data_dir, runtimes.get(pair.output_name)))
        except InputError as exc:
            log.error("%s: not scored: %s", pair.key, exc)
            failures[pair.key] = str(exc)
    if not results:
        missing = sorted(p.output_name for p in pairs if not (pred_dir / p.output_name).is_file())
        reason = (
            f"missing displacement fields: {', '.join(missing)}" if missing else "; ".join(failures.values())
        )
        raise InputError(f"no pair could be scored: {reason}", path=pred_dir)
    return EvaluationReport(results, failures)


def write_report(
    report: EvaluationReport, json_path: Path | None = None, csv_path: Path | None = None
) -> None:
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report.to_json(), indent=2))
    if csv_path is not None:
        write_text_atomic(csv_path, report.to_csv())
