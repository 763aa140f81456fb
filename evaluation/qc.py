"""QC numbers of one pair: the sector crop and planes, det J on a plane, the patch-wise NMI
map (PMM) before and after, and the landmarks to draw (:mod:`remind2reg.evaluation.report`).

Conventions: the fixed image is the US; the MR is on the fixed grid; "after" is
``moving(x + u(x))`` with ``u`` the challenge field (fixed voxels, fixed -> moving). Cost is
bounded for 256^3 volumes: det J is computed on a 5-voxel slab per plane, the PMM on the sector
crop averaged down to about :data:`PMM_SPACING_MM` (at most :data:`PMM_MAX_SIDE` voxels per side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from remind2reg.evaluation.evaluate import PairResult
from remind2reg.evaluation.metrics import jacobian_determinant, sample_displacement
from remind2reg.evaluation.pmm import PatchMIMap, patchwise_nmi
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.dataset import MOVING_MODALITIES, RegistrationPair
from remind2reg.inference.io.nifti import Image

CROP_MARGIN_MM = 4.0  # margin around the sector's bounding box
PMM_SPACING_MM = 1.0  # the PMM is computed on the sector crop averaged down to about this spacing
PMM_MAX_SIDE = 96  # ... with at most this many voxels per side
PMM_PATCH, PMM_STRIDE = 16, 4  # PMM patch side and stride, in PMM voxels


@dataclass
class PairQC:
    """What the report shows for one pair."""

    pair: RegistrationPair
    png: Path | None = None
    metrics: PairResult | None = None  # None without landmarks
    pmm_before: float = float("nan")
    pmm_after: float = float("nan")
    fallback: str | None = None  # from timings.json, e.g. "identity"
    init_transform: str | None = None  # from timings.json: the file register --init-transforms used
    guard: dict[str, Any] = field(default_factory=dict)  # from timings.json: decision, confidence, evidence
    error: str | None = None  # why the pair could not be drawn

    @property
    def modality(self) -> str:
        mod = self.pair.moving_name.modality
        return MOVING_MODALITIES.get(mod, mod)


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


def det_j_plane(disp: NDArray, axis: int, index: int, crop: Crop) -> NDArray[np.float64]:
    """det J on the plane ``x[axis] = index`` (NaN within 2 voxels of the border), crop only.

    Computed with the official stencil on a 5-voxel slab: the same numbers as
    :func:`remind2reg.evaluation.metrics.jacobian_determinant` on the whole field.
    """
    n = disp.shape[axis]
    other = [a for a in range(3) if a != axis]
    out = np.full([disp.shape[a] for a in other], np.nan)
    if 2 <= index < n - 2:
        slab = np.take(disp, np.arange(index - 2, index + 3), axis=axis)
        det = jacobian_determinant(slab)  # the slab's middle plane, in-plane cropped by 2
        out[2:-2, 2:-2] = np.take(det, 0, axis=axis)
    return out[crop.lo[other[0]] : crop.hi[other[0]], crop.lo[other[1]] : crop.hi[other[1]]]


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
    :func:`remind2reg.evaluation.evaluate.read_pair_landmarks`; ``moving_spacing``: the moving header's
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
