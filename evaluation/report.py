"""Visual QC of a folder of predicted fields: ``remind2reg report``.

One PNG per pair (:func:`draw_pair`) and an ``index.html`` with the metrics table and
thumbnails. Each PNG has three rows, the planes through the centroid of the US sector
orthogonal to the array axes i, j and k of the fixed grid, and seven columns:

1-2. checkerboard of the US and the MR, before (the input alignment) and after registration;
3-4. MR edges (red) over the US, before and after, with the landmarks within
     :data:`LANDMARK_SLAB_MM` of the plane: a disc at the fixed landmark coloured by its error
     (initial error before, TRE after) and an arrow to where the moving landmark is;
5.   det J of the field, diverging colours centred at 1 (blue < 1 < red, folds saturate blue);
6-7. the patch-wise NMI map (:mod:`evaluation.pmm`) before and after, with its mean in the
     sector, a landmark-free score.

Conventions: the fixed image is the US; the MR is shown on the fixed grid (resampled if it
is on another grid); "after" is ``moving(x + u(x))``. Panels are cropped to the sector's
bounding box. Image rows are the first remaining array axis, columns the second, in voxel
indices; the orientation is that of the array, not radiological.

Cost is bounded for 256^3 volumes: the overlays warp only the three planes, det J is
computed on a 5-voxel slab per plane, and the PMM on the sector crop averaged down to about
:data:`PMM_SPACING_MM` (at most :data:`PMM_MAX_SIDE` voxels per side).
"""

from __future__ import annotations

import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from numpy.typing import NDArray
from PIL import Image as PILImage
from remind2reg.evaluation.evaluate import (
    EvaluationReport,
    PairResult,
    evaluate_pair,
    read_pair_landmarks,
    read_runtimes,
    read_timing_entries,
)
from remind2reg.evaluation.metrics import jacobian_determinant, sample_displacement
from remind2reg.evaluation.pmm import PatchMIMap, patchwise_nmi
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import atomic_path, write_text_atomic
from remind2reg.inference.io.dataset import MOVING_MODALITIES, RegistrationPair, find_pairs
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.nifti import Image, header_spacing
from scipy import ndimage

log = logging.getLogger(__name__)

LANDMARK_SLAB_MM = 5.0  # landmarks this close to a plane are drawn on it
CHECKER_MM = 8.0  # checkerboard tile size
CROP_MARGIN_MM = 4.0  # margin around the sector's bounding box
PMM_SPACING_MM = 1.0  # the PMM is computed on the sector crop averaged down to about this spacing
PMM_MAX_SIDE = 96  # ... with at most this many voxels per side
PMM_PATCH, PMM_STRIDE = 16, 4  # PMM patch side and stride, in PMM voxels
TRE_RANGE_MM = 8.0  # landmark colours saturate at this error
PANEL_INCHES, DPI = 2.1, 80
INDEX = "index.html"


@dataclass
class PairQC:
    """What the report shows for one pair."""

    pair: RegistrationPair
    png: Path | None = None
    metrics: PairResult | None = None  # None without landmarks
    pmm_before: float = float("nan")
    pmm_after: float = float("nan")
    fallback: str | None = None  # from timings.json, e.g. "identity"
    error: str | None = None  # why the pair could not be drawn

    @property
    def modality(self) -> str:
        mod = self.pair.moving_name.modality
        return MOVING_MODALITIES.get(mod, mod)


@dataclass
class ReportResult:
    index: Path
    pairs: list[PairQC] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.error is None for p in self.pairs)


# -- geometry of the panels -----------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """The sector's bounding box plus a margin, in full voxels ``[lo, hi)``, and its centroid."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    centre: tuple[int, int, int]


def sector_crop(mask: NDArray[np.bool_], spacing: NDArray) -> Crop:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise InputError("the ultrasound has no sector to report on")
    margin = np.ceil(CROP_MARGIN_MM / np.asarray(spacing)).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    centre = np.rint(idx.mean(0)).astype(int)
    return Crop(tuple(map(int, lo)), tuple(map(int, hi)), tuple(map(int, centre)))  # type: ignore[arg-type]


def plane_points(axis: int, index: int, crop: Crop) -> NDArray[np.float64]:
    """Voxel coordinates ``(rows, cols, 3)`` of the crop's part of the plane ``x[axis] = index``."""
    other = [a for a in range(3) if a != axis]
    rows, cols = (np.arange(crop.lo[a], crop.hi[a]) for a in other)
    pts = np.zeros((len(rows), len(cols), 3))
    pts[..., axis] = index
    pts[..., other[0]] = rows[:, None]
    pts[..., other[1]] = cols[None, :]
    return pts


def plane_slice(volume: NDArray, axis: int, index: int, crop: Crop) -> NDArray:
    """The crop's part of the plane ``x[axis] = index`` of ``volume``: the voxels at
    :func:`plane_points`, read directly (rows: the first remaining array axis, columns: the second)."""
    other = [a for a in range(3) if a != axis]
    plane = np.take(volume, index, axis=axis)
    return plane[crop.lo[other[0]] : crop.hi[other[0]], crop.lo[other[1]] : crop.hi[other[1]]]


def sample(volume: NDArray, points: NDArray, order: int = 1) -> NDArray[np.float32]:
    """``volume`` at voxel ``points (..., 3)`` (zero outside)."""
    flat = points.reshape(-1, 3).T
    values = ndimage.map_coordinates(np.asarray(volume, dtype=np.float32), flat, order=order, cval=0.0)
    return values.reshape(points.shape[:-1])


def normalise(values: NDArray, reference: NDArray | None = None) -> NDArray[np.float32]:
    """Intensities scaled to [0, 1] between the 1st and 99th percentile of ``reference``."""
    ref = values if reference is None or reference.size == 0 else reference
    lo, hi = np.percentile(ref, [1.0, 99.0]) if ref.size else (0.0, 1.0)
    return np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def checkerboard(a: NDArray, b: NDArray, tile: int) -> NDArray:
    """Tiles of ``a`` and ``b`` alternating like a chessboard."""
    r, c = np.indices(a.shape)
    return np.where(((r // tile) + (c // tile)) % 2 == 0, a, b)


def edges(image: NDArray, sigma: float, quantile: float = 0.9) -> NDArray[np.bool_]:
    """Strong edges: smoothed gradient magnitude above its ``quantile``."""
    grad = ndimage.gaussian_gradient_magnitude(np.asarray(image, dtype=np.float32), sigma)
    return grad > np.quantile(grad, quantile) if grad.size else np.zeros(image.shape, dtype=bool)


def det_j_plane(disp: NDArray, axis: int, index: int, crop: Crop) -> NDArray[np.float64]:
    """det J on the plane ``x[axis] = index`` (NaN within 2 voxels of the border), crop only.

    Computed with the official stencil on a 5-voxel slab: the same numbers as
    :func:`evaluation.metrics.jacobian_determinant` on the whole field.
    """
    n = disp.shape[axis]
    other = [a for a in range(3) if a != axis]
    out = np.full([disp.shape[a] for a in other], np.nan)
    if 2 <= index < n - 2:
        slab = np.take(disp, np.arange(index - 2, index + 3), axis=axis)
        det = jacobian_determinant(slab)  # the slab's middle plane, in-plane cropped by 2
        out[2:-2, 2:-2] = np.take(det, 0, axis=axis)
    return out[crop.lo[other[0]] : crop.hi[other[0]], crop.lo[other[1]] : crop.hi[other[1]]]


# -- the patch-wise MI map on a downsampled crop --------------------------------------------


def block_mean(volume: NDArray, factor: int) -> NDArray[np.float32]:
    """Averages over ``factor^3`` blocks (the volume cut down to a multiple of ``factor``)."""
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    n = [s // factor for s in volume.shape]
    v = np.asarray(volume, dtype=np.float32)[: n[0] * factor, : n[1] * factor, : n[2] * factor]
    return v.reshape(n[0], factor, n[1], factor, n[2], factor).mean(axis=(1, 3, 5))


@dataclass(frozen=True)
class PMMs:
    """PMM before and after on the coarse crop; coarse voxel ``w`` is full voxels
    ``factor * (lo + w) .. factor * (lo + w) + factor - 1``."""

    before: PatchMIMap
    after: PatchMIMap
    factor: int
    lo: tuple[int, int, int]  # in coarse voxels


def pmm_before_after(fixed: Image, moving: Image, disp: NDArray, mask: NDArray, crop: Crop) -> PMMs:
    """PMM of US vs MR before and after ``disp``, on the sector crop at about 1 mm."""
    spacing = float(np.mean(fixed.spacing))
    extent = max(h - lo for lo, h in zip(crop.lo, crop.hi, strict=True))
    factor = max(1, round(PMM_SPACING_MM / spacing), -(-extent // PMM_MAX_SIDE))
    lo = tuple(v // factor for v in crop.lo)
    hi = tuple(min(-(-v // factor), n // factor) for v, n in zip(crop.hi, fixed.shape, strict=True))
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    full_box = tuple(slice(a * factor, b * factor) for a, b in zip(lo, hi, strict=True))
    us = block_mean(fixed.array[full_box], factor)  # = block_mean(fixed.array, factor)[box]
    sector = block_mean(mask[full_box], factor) > 0.5
    mr_coarse = block_mean(moving.array, factor)  # whole: the warp may reach outside the crop
    centres = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    centres = centres * factor + (factor - 1) / 2.0  # full-voxel coordinates of the coarse centres
    # u: fixed -> moving, in full fixed voxels; full voxel y is coarse voxel (y - (factor - 1) / 2) / factor.
    u = sample_displacement(disp, centres.reshape(-1, 3), order=1).reshape(centres.shape)
    warped = sample(mr_coarse, (centres + u - (factor - 1) / 2.0) / factor)  # moving(x + u(x)), coarse
    before = patchwise_nmi(us, mr_coarse[box], sector, PMM_PATCH, PMM_STRIDE)
    after = patchwise_nmi(us, warped, sector, PMM_PATCH, PMM_STRIDE)
    return PMMs(before, after, factor, lo)  # type: ignore[arg-type]


def pmm_plane(pmm: PatchMIMap, pmms: PMMs, axis: int, index: int) -> tuple[NDArray, list[float]]:
    """The PMM slice nearest the plane and its imshow extent in full-voxel coordinates."""
    w = int(np.clip(index // pmms.factor - pmms.lo[axis], 0, pmm.map.shape[axis] - 1))
    values = np.take(pmm.map, w, axis=axis)
    other = [a for a in range(3) if a != axis]
    f = pmms.factor
    # Coarse voxel w spans full voxels f * w .. f * w + f - 1, i.e. edges f * w - 0.5 .. f * (w + 1) - 0.5.
    # imshow extent is (left, right, bottom, top) = (first col edge, last col edge, last row edge,
    # first row edge): row 0 at the top, as in the other panels (see draw_pair).
    r0, c0 = pmms.lo[other[0]] * f - 0.5, pmms.lo[other[1]] * f - 0.5
    extent = [c0, c0 + values.shape[1] * f, r0 + values.shape[0] * f, r0]
    return values, extent


# -- the figure --------------------------------------------------------------------------------


@dataclass
class Landmarks:
    """Fixed landmarks (fixed voxels), and the residual to the moving landmark before and after."""

    fixed: NDArray
    residual_before: NDArray  # mov - fix (voxels)
    residual_after: NDArray  # mov - (fix + u(fix))
    error_before: NDArray  # mm, as the evaluator computes it
    error_after: NDArray


def display_landmarks(fix: NDArray, mov: NDArray, disp: NDArray, moving_spacing: NDArray) -> Landmarks:
    """The residuals and errors to draw, from landmarks read by
    :func:`evaluation.evaluate.read_pair_landmarks`; ``moving_spacing``: the moving header's
    ``pixdim``, as the evaluator uses (so the errors equal its per-landmark TRE)."""
    before = mov - fix
    after = mov - (fix + sample_displacement(disp, fix))  # u: fixed -> moving, cubic as official
    return Landmarks(
        fix,
        before,
        after,
        np.linalg.norm(before * moving_spacing, axis=1),
        np.linalg.norm(after * moving_spacing, axis=1),
    )


def _draw_landmarks(ax, lms: Landmarks, after: bool, axis: int, index: int, spacing: NDArray) -> None:
    other = [a for a in range(3) if a != axis]
    near = np.abs(lms.fixed[:, axis] - index) * spacing[axis] <= LANDMARK_SLAB_MM
    errors = lms.error_after if after else lms.error_before
    residual = lms.residual_after if after else lms.residual_before
    norm = Normalize(0.0, TRE_RANGE_MM)
    for p, r, e in zip(lms.fixed[near], residual[near], errors[near], strict=True):
        # The panel's rows are array axis other[0], its columns other[1]; matplotlib points are (x, y),
        # i.e. (column, row), in the data coordinates set by the panel extent (voxel indices).
        row, col = p[other[0]], p[other[1]]
        ax.annotate(
            "",
            xy=(col + r[other[1]], row + r[other[0]]),
            xytext=(col, row),
            arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 0.8},
        )
        ax.scatter([col], [row], s=28, c=[e], cmap="RdYlGn_r", norm=norm, edgecolors="black", linewidths=0.5)
        ax.text(col + 2, row - 2, f"{e:.1f}", color="white", fontsize=6)


def draw_pair(
    fixed: Image,
    moving: Image,
    disp: NDArray,
    mask: NDArray,
    crop: Crop,
    pmms: PMMs,
    landmarks: Landmarks | None,
    title: str,
) -> Figure:
    """The 3 x 7 panel figure of one pair (see the module docstring)."""
    spacing = fixed.spacing
    tile = max(2, round(CHECKER_MM / float(np.mean(spacing))))
    sigma = max(1.0, 1.0 / float(np.mean(spacing)))  # about 1 mm
    columns = [
        "checkerboard before",
        "checkerboard after",
        "MR edges on US, before",
        "MR edges on US, after",
        "det J",
        f"PMM before (mean {pmms.before.mean:.3f})",
        f"PMM after (mean {pmms.after.mean:.3f})",
    ]
    fig = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * 3 + 0.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(columns), squeeze=False)
    us_ref = fixed.array[mask]
    # One PMM colour scale for before and after: the maps' common 99th percentile.
    both = np.concatenate([pmms.before.map.ravel(), pmms.after.map.ravel()])
    pmm_max = float(np.nanpercentile(both, 99)) if np.isfinite(both).any() else 1.0
    for axis in range(3):
        index = crop.centre[axis]
        other = [a for a in range(3) if a != axis]
        pts = plane_points(axis, index, crop)
        # Rows of every panel are array axis other[0] (top to bottom, increasing: imshow's default
        # origin="upper"), columns other[1]; no transpose or flip. The extent (left, right, bottom,
        # top) puts the voxel centres at their indices, so landmarks are drawn in voxel coordinates.
        extent = [
            crop.lo[other[1]] - 0.5,
            crop.hi[other[1]] - 0.5,
            crop.hi[other[0]] - 0.5,
            crop.lo[other[0]] - 0.5,
        ]
        us = normalise(plane_slice(fixed.array, axis, index, crop), us_ref)
        in_sector = ndimage.binary_dilation(plane_slice(mask, axis, index, crop), iterations=2)
        mr_raw = plane_slice(moving.array, axis, index, crop)
        u = sample_displacement(disp, pts.reshape(-1, 3), order=1).reshape(pts.shape)  # fixed -> moving
        warped_raw = sample(moving.array, pts + u)  # "after": moving(x + u(x))
        mr, warped = normalise(mr_raw), normalise(warped_raw, mr_raw)
        panels = [checkerboard(us, mr, tile), checkerboard(us, warped, tile)]
        for col, image in enumerate(panels):
            axes[axis, col].imshow(image, cmap="gray", extent=extent, vmin=0, vmax=1, interpolation="nearest")
        for col, (mr_img, after) in enumerate(((mr, False), (warped, True)), start=2):
            ax = axes[axis, col]
            ax.imshow(us, cmap="gray", extent=extent, vmin=0, vmax=1, interpolation="nearest")
            overlay = np.zeros((*us.shape, 4), dtype=np.float32)
            overlay[edges(mr_img, sigma) & in_sector] = (1.0, 0.15, 0.1, 0.8)  # no US outside: no use
            ax.imshow(overlay, extent=extent, interpolation="nearest")
            if landmarks is not None:
                _draw_landmarks(ax, landmarks, after, axis, index, spacing)
        det = det_j_plane(disp, axis, index, crop)
        im_det = axes[axis, 4].imshow(
            det, cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0), extent=extent
        )
        for col, pmm in ((5, pmms.before), (6, pmms.after)):
            ax = axes[axis, col]
            ax.imshow(us, cmap="gray", extent=extent, vmin=0, vmax=1, interpolation="nearest")
            values, pmm_extent = pmm_plane(pmm, pmms, axis, index)
            im_pmm = ax.imshow(
                values, cmap="viridis", vmin=0, vmax=max(pmm_max, 1e-3), alpha=0.8, extent=pmm_extent
            )
        for col, ax in enumerate(axes[axis]):
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_xticks([])
            ax.set_yticks([])
            if axis == 0:
                ax.set_title(columns[col], fontsize=8)
        axes[axis, 0].set_ylabel(f"{'ijk'[axis]} = {index}", fontsize=8)
    fig.colorbar(im_det, ax=axes[:, 4], fraction=0.05, pad=0.02, shrink=0.6).ax.tick_params(labelsize=6)
    fig.colorbar(im_pmm, ax=list(axes[:, 5:].ravel()), fraction=0.05, pad=0.02, shrink=0.6).ax.tick_params(
        labelsize=6
    )
    fig.suptitle(title, fontsize=9)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure atomically as a palette PNG (256 colours: a fraction of the RGB size)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    image = PILImage.open(buffer).convert("RGB").quantize(colors=256)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path


# -- one pair, the folder, the index -------------------------------------------------------------


def _title(qc: PairQC) -> str:
    parts = [f"{qc.pair.key} ({qc.modality})"]
    if qc.metrics is not None:
        m = qc.metrics
        parts.append(
            f"TRE {m.tre_initial:.2f} -> {m.tre:.2f} mm, SDlogJ {m.sdlogj:.3f}, folds {m.folding_percent:.3f} %"
        )
    parts.append(f"PMM {qc.pmm_before:.3f} -> {qc.pmm_after:.3f}")
    if qc.fallback:
        parts.append(f"FALLBACK: {qc.fallback}")
    return "   ".join(parts)


def report_pair(
    pair: RegistrationPair, pred_dir: Path, data_root: Path, out_dir: Path, qc: PairQC, runtime: float | None
) -> None:
    """Draw one pair into ``out_dir`` and fill ``qc``; raises on invalid inputs."""
    from remind2reg.inference.core.sector import sector_mask
    from remind2reg.inference.pipeline import load_fixed, load_moving

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
    fig = draw_pair(fixed, moving, disp, mask, crop, pmms, landmarks, _title(qc))
    qc.png = save_png(fig, out_dir / f"qc_{pair.fixed_name.case}_{pair.moving_name.modality}.png")


def read_fallbacks(pred_dir: Path) -> dict[str, str]:
    """``{output name: fallback}`` from ``timings.json`` (e.g. the identity field of a failed case)."""
    return {
        name: str(e["fallback"]) for name, e in read_timing_entries(pred_dir).items() if e.get("fallback")
    }


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
    result = ReportResult(index=out_dir / INDEX)
    for pair in pairs:
        qc = PairQC(pair, fallback=fallbacks.get(pair.output_name))
        log.info("Drawing %s", pair.key)
        try:
            report_pair(pair, pred_dir, data_dir, out_dir, qc, runtimes.get(pair.output_name))
        except Exception as exc:  # one bad pair must not hide the others
            qc.error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: %s", pair.key, qc.error, exc_info=None if isinstance(exc, InputError) else exc)
        result.pairs.append(qc)
    write_text_atomic(result.index, index_html(result, data_dir, pred_dir))
    write_text_atomic(out_dir / "qc.json", json.dumps(qc_json(result), indent=2))
    return result


def qc_json(result: ReportResult) -> dict:
    """Machine-readable QC: per pair, the PMM means, metrics and any error."""
    return {
        qc.pair.key: {
            "pmm_before": qc.pmm_before,
            "pmm_after": qc.pmm_after,
            "tre_initial": qc.metrics.tre_initial if qc.metrics else None,
            "tre": qc.metrics.tre if qc.metrics else None,
            "fallback": qc.fallback,
            "error": qc.error,
            "png": qc.png.name if qc.png else None,
        }
        for qc in result.pairs
    }


def _cell(value: float | None, fmt: str, css: str = "") -> str:
    if value is None or not np.isfinite(value):
        return "<td>-</td>"
    return f'<td class="{css}">{value:{fmt}}</td>' if css else f"<td>{value:{fmt}}</td>"


def index_html(result: ReportResult, data_dir: Path, pred_dir: Path) -> str:
    """The index page: the metrics table (evaluator's numbers plus PMM) and one figure per pair."""
    head = (
        "<tr><th>pair</th><th>MR</th><th>n</th><th>TRE0 mm</th><th>TRE mm</th><th>SDlogJ</th>"
        "<th>fold %</th><th>s</th><th>PMM before</th><th>PMM after</th><th>note</th></tr>"
    )
    rows = []
    for qc in result.pairs:
        m = qc.metrics
        better = "" if m is None else ("good" if m.tre < m.tre_initial else "bad")
        pmm_css = "good" if qc.pmm_after > qc.pmm_before else "bad" if qc.pmm_after < qc.pmm_before else ""
        note = (
            html.escape(qc.error)
            if qc.error
            else f"fallback: {html.escape(qc.fallback)}"
            if qc.fallback
            else ""
        )
        name = (
            f'<a href="#{html.escape(qc.pair.key)}">{html.escape(qc.pair.key)}</a>'
            if qc.png
            else html.escape(qc.pair.key)
        )
        rows.append(
            f"<tr><td>{name}</td><td>{qc.modality}</td><td>{m.n_landmarks if m else '-'}</td>"
            + _cell(m.tre_initial if m else None, ".3f")
            + _cell(m.tre if m else None, ".3f", better)
            + _cell(m.sdlogj if m else None, ".4f")
            + _cell(m.folding_percent if m else None, ".3f")
            + _cell(m.runtime_s if m else None, ".1f")
            + _cell(qc.pmm_before, ".3f")
            + _cell(qc.pmm_after, ".3f", pmm_css)
            + f'<td class="{"bad" if qc.error or qc.fallback else ""}">{note}</td></tr>'
        )
    evaluated = [qc.metrics for qc in result.pairs if qc.metrics is not None]
    if evaluated:
        agg = EvaluationReport(evaluated).aggregates()
        pmm_b = np.nanmean([q.pmm_before for q in result.pairs]) if result.pairs else float("nan")
        pmm_a = np.nanmean([q.pmm_after for q in result.pairs]) if result.pairs else float("nan")
        rows.append(
            f"<tr class='agg'><td>mean ({len(evaluated)} with landmarks)</td><td></td><td></td>"
            + _cell(agg["TRE_initial"]["mean"], ".3f")
            + _cell(agg["TRE_lm"]["mean"], ".3f")
            + _cell(agg["LogJacDetStd"]["mean"], ".4f")
            + _cell(agg["folding_percent"]["mean"], ".3f")
            + _cell(agg.get("runtime_s", {}).get("mean"), ".1f")
            + _cell(float(pmm_b), ".3f")
            + _cell(float(pmm_a), ".3f")
            + "<td></td></tr>"
        )
        rows.append(
            "<tr class='agg'><td>TRE30 (0.3 quantile)</td><td></td><td></td>"
            + _cell(agg["TRE_initial"]["30"], ".3f")
            + _cell(agg["TRE_lm"]["30"], ".3f")
            + "<td></td>" * 6
            + "</tr>"
        )
    figures = "\n".join(
        f'<h2 id="{html.escape(qc.pair.key)}">{html.escape(qc.pair.key)} ({qc.modality})</h2>'
        f'<a href="{qc.png.name}"><img src="{qc.png.name}" alt="QC of {html.escape(qc.pair.key)}"></a>'
        for qc in result.pairs
        if qc.png is not None
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>remind2reg QC</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}
td:first-child, td:last-child {{ text-align: left; }}
.good {{ background: #d9f2d9; }} .bad {{ background: #f8d7d7; }} .agg {{ font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Registration QC</h1>
<p>Data <code>{html.escape(str(data_dir))}</code>, fields <code>{html.escape(str(pred_dir))}</code>.
TRE as the challenge computes it (TRE0: zero field); SDlogJ with the official +3; fold %: det J &le; 0.
PMM: mean patch-wise NMI (2 MI / (H(US) + H(MR)), {PMM_PATCH}^3 patches every {PMM_STRIDE} voxels at about
{PMM_SPACING_MM:g} mm, inside the US sector): a landmark-free score, higher is better.</p>
<p>Figures: rows are planes through the US sector centroid; columns: checkerboard before/after,
MR edges (red) on the US before/after with landmarks within {LANDMARK_SLAB_MM:g} mm (disc: error in mm,
green 0 to red {TRE_RANGE_MM:g}+; arrow: to the moving landmark), det J (blue &lt; 1 &lt; red), PMM before/after.</p>
<table>{head}
{"".join(rows)}
</table>
{figures}
</body></html>
"""
