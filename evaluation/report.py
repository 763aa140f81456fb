"""Visual QC of a folder of predicted fields: ``remind2reg report``.

One PNG per pair (:mod:`remind2reg.evaluation.figures`, from the numbers of
:mod:`remind2reg.evaluation.qc`) and an ``index.html`` with the metrics table and the figures
(:mod:`remind2reg.evaluation.report_html`), plus ``qc.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from remind2reg.evaluation.evaluate import evaluate_pair, read_pair_landmarks
from remind2reg.evaluation.figures import draw_pair, save_png, title
from remind2reg.evaluation.qc import PairQC, display_landmarks, pmm_before_after, sector_crop
from remind2reg.evaluation.report_html import index_html, qc_json
from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.cases import load_fixed, load_moving
from remind2reg.inference.io.dataset import RegistrationPair, find_pairs
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.nifti import header_spacing
from remind2reg.inference.io.timings import fallbacks as read_fallbacks
from remind2reg.inference.io.timings import guard_notes as read_guard_notes
from remind2reg.inference.io.timings import init_transforms as read_init_transforms
from remind2reg.inference.io.timings import runtimes as read_runtimes

log = logging.getLogger(__name__)

INDEX = "index.html"


@dataclass
class ReportResult:
    index: Path
    pairs: list[PairQC] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.error is None for p in self.pairs)


def report_pair(
    pair: RegistrationPair, pred_dir: Path, data_root: Path, out_dir: Path, qc: PairQC, runtime: float | None
) -> None:
    """Draw one pair into ``out_dir`` and fill ``qc``; raises on invalid inputs."""
    fixed = load_fixed(pair)
    moving = load_moving(pair, fixed)
    disp = read_displacement(pred_dir / pair.output_name, expected_shape=fixed.shape)
    mask = sector_mask(fixed.array)
    crop = sector_crop(mask, fixed.spacing)
    landmarks = None
    raw = read_pair_landmarks(pair, data_root)  # read and checked once, for the metrics and the figure
    if raw is not None:
        qc.metrics = evaluate_pair(pair, pred_dir, data_root, runtime, disp=disp, landmarks=raw)
        landmarks = display_landmarks(*raw, disp, header_spacing(pair.moving))
    pmms = pmm_before_after(fixed, moving, disp, mask, crop)
    qc.pmm_before, qc.pmm_after = pmms.before.mean, pmms.after.mean
    fig = draw_pair(fixed, moving, disp, mask, crop, pmms, landmarks, title(qc))
    qc.png = save_png(fig, out_dir / f"qc_{pair.fixed_name.case}_{pair.moving_name.modality}.png")


def build_report(
    data_dir: str | Path,
    pred_dir: str | Path,
    out_dir: str | Path,
    modalities: tuple[str, ...] = ("0001", "0002"),
) -> ReportResult:
    """QC every pair of ``data_dir`` with a field in ``pred_dir``: PNGs and ``index.html`` in ``out_dir``.

    A pair that cannot be drawn (missing or invalid field, bad image) is listed with its error;
    the others are still drawn.
    """
    data_dir, pred_dir, out_dir = Path(data_dir), Path(pred_dir), Path(out_dir)
    if not pred_dir.is_dir():
        raise InputError("prediction folder not found", path=pred_dir)
    pairs = find_pairs(data_dir, modalities)
    out_dir.mkdir(parents=True, exist_ok=True)
    runtimes, fallbacks = read_runtimes(pred_dir), read_fallbacks(pred_dir)
    guard, inits = read_guard_notes(pred_dir), read_init_transforms(pred_dir)
    result = ReportResult(index=out_dir / INDEX)
    for pair in pairs:
        name = pair.output_name
        qc = PairQC(
            pair, fallback=fallbacks.get(name), guard=guard.get(name, {}), init_transform=inits.get(name)
        )
        log.info("Drawing %s", pair.key)
        try:
            report_pair(pair, pred_dir, data_dir, out_dir, qc, runtimes.get(pair.output_name))
        except Exception as exc:  # one bad pair must not hide the others
            qc.error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: %s", pair.key, qc.error, exc_info=None if isinstance(exc, InputError) else exc)
        result.pairs.append(qc)
    write_text_atomic(result.index, index_html(result.pairs, data_dir, pred_dir))
    write_text_atomic(out_dir / "qc.json", json.dumps(qc_json(result.pairs), indent=2))
    return result
