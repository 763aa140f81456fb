"""The QC figure of one pair (:func:`draw_pair`): three planes x seven panels.

Each row is the plane through the centroid of the US sector orthogonal to one array axis
(i, j, k) of the fixed grid; the columns:

1-2. checkerboard of the US and the MR, before (the input alignment) and after registration;
3-4. MR edges (red) over the US, before and after, with the landmarks within
     :data:`LANDMARK_SLAB_MM` of the plane: a disc at the fixed landmark coloured by its error
     (initial error before, TRE after) and an arrow to where the moving landmark is;
5.   det J of the field, diverging colours centred at 1 (blue < 1 < red, folds saturate blue);
6-7. the patch-wise NMI map before and after, with its mean in the sector.

Panels are cropped to the sector's bounding box. Image rows are the first remaining array
axis, columns the second, in voxel indices; the orientation is that of the array, not
radiological. No transpose or flip anywhere.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from numpy.typing import NDArray
from PIL import Image as PILImage
from scipy import ndimage

from remind2reg.evaluation.metrics import sample_displacement
from remind2reg.evaluation.qc import (
    Crop,
    Landmarks,
    PairQC,
    PMMs,
    det_j_plane,
    plane_points,
    plane_slice,
    pmm_plane,
    sample,
)
from remind2reg.inference.io.atomic import atomic_path
from remind2reg.inference.io.nifti import Image

LANDMARK_SLAB_MM = 5.0  # landmarks this close to a plane are drawn on it
CHECKER_MM = 8.0  # checkerboard tile size
TRE_RANGE_MM = 8.0  # landmark colours saturate at this error
PANEL_INCHES, DPI = 2.1, 80


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


COLUMNS = (
    "checkerboard before",
    "checkerboard after",
    "MR edges on US, before",
    "MR edges on US, after",
    "det J",
    "PMM before",
    "PMM after",
)


def panel_extent(crop: Crop, other: list[int]) -> list[float]:
    """imshow extent (left, right, bottom, top) that puts the voxel centres at their indices:
    rows are array axis ``other[0]`` (top to bottom, increasing: imshow's origin="upper"),
    columns ``other[1]``; no transpose or flip. Landmarks are then drawn in voxel coordinates."""
    return [
        crop.lo[other[1]] - 0.5,
        crop.hi[other[1]] - 0.5,
        crop.hi[other[0]] - 0.5,
        crop.lo[other[0]] - 0.5,
    ]


def _overlay_panels(axes, fixed: Image, moving: Image, disp: NDArray, mask: NDArray, crop: Crop, axis: int,
                    landmarks: Landmarks | None, extent: list[float]) -> NDArray:  # fmt: skip
    """Columns 1-4 of one row (checkerboards, MR edges on the US); returns the US plane (0..1)."""
    spacing, index = fixed.spacing, crop.centre[axis]
    tile = max(2, round(CHECKER_MM / float(np.mean(spacing))))
    sigma = max(1.0, 1.0 / float(np.mean(spacing)))  # about 1 mm
    pts = plane_points(axis, index, crop)
    us = normalise(plane_slice(fixed.array, axis, index, crop), fixed.array[mask])
    in_sector = ndimage.binary_dilation(plane_slice(mask, axis, index, crop), iterations=2)
    mr_raw = plane_slice(moving.array, axis, index, crop)
    u = sample_displacement(disp, pts.reshape(-1, 3), order=1).reshape(pts.shape)  # fixed -> moving
    warped_raw = sample(moving.array, pts + u)  # "after": moving(x + u(x))
    mr, warped = normalise(mr_raw), normalise(warped_raw, mr_raw)
    for col, image in enumerate((checkerboard(us, mr, tile), checkerboard(us, warped, tile))):
        axes[col].imshow(image, cmap="gray", extent=extent, vmin=0, vmax=1, interpolation="nearest")
    for col, (mr_img, after) in enumerate(((mr, False), (warped, True)), start=2):
        axes[col].imshow(us, cmap="gray", extent=extent, vmin=0, vmax=1, interpolation="nearest")
        overlay = np.zeros((*us.shape, 4), dtype=np.float32)
        overlay[edges(mr_img, sigma) & in_sector] = (1.0, 0.15, 0.1, 0.8)  # no US outside: no use
        axes[col].imshow(overlay, extent=extent, interpolation="nearest")
        if landmarks is not None:
            _draw_landmarks(axes[col], landmarks, after, axis, index, spacing)
    return us


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
    columns = [
        *COLUMNS[:5],
        f"PMM before (mean {pmms.before.mean:.3f})",
        f"PMM after (mean {pmms.after.mean:.3f})",
    ]
    fig = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * 3 + 0.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(columns), squeeze=False)
    # One PMM colour scale for before and after: the maps' common 99th percentile.
    both = np.concatenate([pmms.before.map.ravel(), pmms.after.map.ravel()])
    pmm_max = max(float(np.nanpercentile(both, 99)) if np.isfinite(both).any() else 1.0, 1e-3)
    for axis in range(3):
        index, other = crop.centre[axis], [a for a in range(3) if a != axis]
        extent = panel_extent(crop, other)
        us = _overlay_panels(axes[axis], fixed, moving, disp, mask, crop, axis, landmarks, extent)
        det = det_j_plane(disp, axis, index, crop)
        im_det = axes[axis, 4].imshow(
            det, cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0), extent=extent
        )
        for col, pmm in ((5, pmms.before), (6, pmms.after)):
            axes[axis, col].imshow(us, cmap="gray", extent=extent, vmin=0, vmax=1, interpolation="nearest")
            values, pmm_extent = pmm_plane(pmm, pmms, axis, index)
            im_pmm = axes[axis, col].imshow(
                values, cmap="viridis", vmin=0, vmax=pmm_max, alpha=0.8, extent=pmm_extent
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
    pmm_axes = list(axes[:, 5:].ravel())
    fig.colorbar(im_pmm, ax=pmm_axes, fraction=0.05, pad=0.02, shrink=0.6).ax.tick_params(labelsize=6)
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


def title(qc: PairQC) -> str:
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
