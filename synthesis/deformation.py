"""Ground-truth deformations of the families (fixed -> moving, see :mod:`synthesis.brainshift`).

Every field returned here is ``(grid, grid, grid, 3)`` float32 in voxels of the fixed grid,
``warped = moving(x + u(x))``, made as ``rigid o exp(v)`` (scaling and squaring: no folds).

* :func:`brain_shift`: legacy and ``post-resection``; sinking + cavity collapse + residual +
  a small rigid part, all scaled together to a drawn mean initial error in the sector.
* :func:`rigid_dominant_shift`: ``pre-resection``, ``tissue-echo``, ``weak-contrast``; a rigid
  part re-drawn from the RESECT tag fits (:data:`synthesis.families.RESECT_RIGID`) and a
  smooth residual scaled to a drawn distance left after the best rigid fit; or a nearly
  aligned case, whose rigid part is scaled down to a drawn small initial error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from remind2reg.inference.core.pointfit import rigid_fit_residual
from remind2reg.inference.geometry import apply_affine, compose_affine_displacement
from remind2reg.synthesis.brainshift import (
    BrainShiftParams,
    CoarseGrid,
    magnitude_mm,
    nonrigid_displacement_coarse,
    rigid_fixed2moving_world,
    smooth_noise,
    upsample,
)
from remind2reg.synthesis.families import RESECT_RIGID, PostResectionShiftSettings, RigidShiftSettings


def random_perpendicular(v: NDArray, rng: np.random.Generator) -> NDArray:
    """A random unit vector perpendicular to ``v``."""
    w = np.cross(v, rng.standard_normal(3))
    return w / np.linalg.norm(w)


@dataclass(frozen=True)
class ShiftGrid:
    """Where a field lives and is calibrated: the fixed grid and its coarse integration grid.

    ``inner``: the sector eroded by 3 mm (where landmarks can lie), fixed voxels.
    """

    vox2world: NDArray
    grid: int
    spacing_mm: float
    coarse_mm: float
    inner: NDArray[np.bool_]

    @property
    def coarse(self) -> CoarseGrid:
        return CoarseGrid((self.grid,) * 3, max(1, round(self.coarse_mm / self.spacing_mm)))

    def calibration_points(self) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """(mask over the coarse points inside ``inner``, their fine-voxel positions (N, 3))."""
        points = self.coarse.fine_voxels()
        idx = np.minimum(points, self.grid - 1).astype(int)
        sel = self.inner[idx[..., 0], idx[..., 1], idx[..., 2]]
        return sel, points[sel]


def _full_field(p: BrainShiftParams, where: ShiftGrid, noise: NDArray) -> NDArray[np.float32]:
    """``rigid o exp(v)`` of ``p`` on the fine grid (fixed voxels)."""
    coarse = where.coarse
    u_nr = nonrigid_displacement_coarse(p, where.vox2world, coarse, noise)
    return compose_affine_displacement(
        upsample(u_nr, coarse.step, (where.grid,) * 3), rigid_fixed2moving_world(p), where.vox2world
    )


def _mean_shift_mm(p: BrainShiftParams, where: ShiftGrid, noise: NDArray, sel, points) -> float:
    """Mean ``|u|`` (mm) of ``rigid o exp(v)`` at the calibration points."""
    u_nr = nonrigid_displacement_coarse(p, where.vox2world, where.coarse, noise)
    rigid_vox = np.linalg.inv(where.vox2world) @ rigid_fixed2moving_world(p) @ where.vox2world
    moved = apply_affine(rigid_vox, points + u_nr[sel])
    return float(magnitude_mm(moved - points, where.vox2world).mean())


def brain_shift(
    params: BrainShiftParams, where: ShiftGrid, target_mean_mm: float, rng: np.random.Generator
) -> tuple[NDArray[np.float32], BrainShiftParams, float]:
    """The field with every magnitude of ``params`` scaled so that the mean ``|u|`` over
    ``where.inner`` is about ``target_mean_mm``. Returns (field, scaled params, scale)."""
    step_mm = where.coarse.step * where.spacing_mm
    noise = smooth_noise(where.coarse.shape, params.residual_smooth_mm / step_mm, rng)
    sel, points = where.calibration_points()
    scale = 1.0
    for _ in range(3):  # fixed-point iteration: exp(v) is not linear in the scale
        mean_mm = _mean_shift_mm(params.scaled(scale), where, noise, sel, points)
        scale *= target_mean_mm / max(mean_mm, 1e-6)
    p = params.scaled(scale)
    return _full_field(p, where, noise), p, scale


# --------------------------------------------------------------------------------------------
# post-resection
# --------------------------------------------------------------------------------------------


def draw_initial_tre(s: PostResectionShiftSettings, rng: np.random.Generator) -> float:
    """Log-normal mean initial error (mm), clipped (see :class:`PostResectionShiftSettings`)."""
    value = s.initial_tre_median_mm * float(np.exp(rng.normal(0.0, s.initial_tre_log_sd)))
    return float(np.clip(value, *s.initial_tre_clip_mm))


def draw_post_resection_shift(
    s: PostResectionShiftSettings,
    surface_world: NDArray,
    beam_world: NDArray,
    cavity_world: NDArray,
    cavity_radius_mm: float,
    rng: np.random.Generator,
) -> BrainShiftParams:
    """Relative component magnitudes (before scaling) of a post-resection shift."""

    def u(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    gravity = Rotation.from_rotvec(
        np.deg2rad(u(s.gravity_tilt_deg)) * random_perpendicular(beam_world, rng)
    ).apply(beam_world)
    translation = rng.standard_normal(3)
    translation *= u(s.translation_mm) / np.linalg.norm(translation)
    return BrainShiftParams(
        sink_mm=u(s.sink_mm),
        sink_lateral_mm=u(s.sink_lateral_mm),
        sink_decay_mm=u(s.sink_decay_mm),
        gravity_world=tuple(gravity),
        cavity_mm=u(s.collapse_mm),
        cavity_centre_world=tuple(cavity_world),
        cavity_radius_mm=max(cavity_radius_mm, 5.0),
        residual_mm=u(s.residual_mm),
        residual_smooth_mm=u(s.residual_smooth_mm),
        rotation_deg=u(s.rotation_deg),
        rotation_axis_world=tuple(random_perpendicular(rng.standard_normal(3), rng)),
        translation_world=tuple(translation),
        pivot_world=tuple(surface_world),
        apex_world=tuple(surface_world),
        beam_world=tuple(beam_world),
    )


# --------------------------------------------------------------------------------------------
# rigid-dominant (RESECT)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RigidDraw:
    """The drawn rigid part and targets of a rigid-dominant case (see RigidShiftSettings)."""

    resect_case: str
    rotation_deg: float
    translation_mm: float
    residual_mm: float  # target: mean distance left after the best rigid fit
    nearly_aligned: bool
    target_tre_mm: float | None  # nearly aligned only: mean initial error in the sector


def draw_rigid(
    s: RigidShiftSettings, rng: np.random.Generator, nearly_aligned: bool | None = None
) -> RigidDraw:
    """One rigid-dominant draw; ``nearly_aligned`` None: drawn with the family's share."""
    if nearly_aligned is None:
        nearly_aligned = bool(rng.random() < s.nearly_aligned_share)
    case, rot, trans, _ = RESECT_RIGID[int(rng.integers(len(RESECT_RIGID)))]
    jitter = np.exp(rng.normal(0.0, s.jitter, 2))
    if nearly_aligned:
        residual = float(rng.uniform(*s.nearly_aligned_residual_mm))
        target = float(rng.uniform(*s.nearly_aligned_tre_mm))
    else:
        residual, target = float(rng.uniform(*s.rigid_residual_mm)), None
    return RigidDraw(case, float(rot * jitter[0]), float(trans * jitter[1]), residual, nearly_aligned, target)


def _rigid_params(draw: RigidDraw, pivot_world: NDArray, beam_world: NDArray, smooth_mm: float, rng):
    """BrainShiftParams of a rigid-dominant case with unit residual (scaled later)."""
    direction = random_perpendicular(rng.standard_normal(3), rng)
    return BrainShiftParams(
        sink_mm=0.0,
        sink_lateral_mm=20.0,
        sink_decay_mm=20.0,
        gravity_world=tuple(beam_world),
        cavity_mm=0.0,
        cavity_centre_world=tuple(pivot_world),
        cavity_radius_mm=5.0,
        residual_mm=1.0,
        residual_smooth_mm=smooth_mm,
        rotation_deg=draw.rotation_deg,
        rotation_axis_world=tuple(random_perpendicular(rng.standard_normal(3), rng)),
        translation_world=tuple(direction * draw.translation_mm),
        pivot_world=tuple(pivot_world),
        apex_world=tuple(pivot_world),
        beam_world=tuple(beam_world),
    )


def _with_rigid_scale(p: BrainShiftParams, factor: float) -> BrainShiftParams:
    return BrainShiftParams(
        **{
            **p.__dict__,
            "rotation_deg": p.rotation_deg * factor,
            "translation_world": tuple(np.asarray(p.translation_world) * factor),
        }
    )


def _calibrate_residual(p: BrainShiftParams, target_mm: float, where: ShiftGrid, noise, sel, points):
    """``p`` with ``residual_mm`` such that the best rigid fit at the points leaves ``target_mm``."""
    residual = 1.0
    for _ in range(3):
        trial = BrainShiftParams(**{**p.__dict__, "residual_mm": residual})
        u_nr = nonrigid_displacement_coarse(trial, where.vox2world, where.coarse, noise)[sel]
        fixed = apply_affine(where.vox2world, points)
        left = rigid_fit_residual(fixed, apply_affine(where.vox2world, points + u_nr))
        residual *= target_mm / max(left, 1e-6)
    return BrainShiftParams(**{**p.__dict__, "residual_mm": residual})


def _scale_rigid_to(p: BrainShiftParams, target_mm: float, where: ShiftGrid, noise, sel, points):
    """``p`` with its rigid part scaled (bisection, factor in [0, 1]) so that the mean initial
    error at the points is ``target_mm`` (as close as the non-rigid part allows)."""
    lo, hi = 0.0, 1.0
    if _mean_shift_mm(_with_rigid_scale(p, 1.0), where, noise, sel, points) <= target_mm:
        return p
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        if _mean_shift_mm(_with_rigid_scale(p, mid), where, noise, sel, points) < target_mm:
            lo = mid
        else:
            hi = mid
    return _with_rigid_scale(p, 0.5 * (lo + hi))


def rigid_dominant_shift(
    draw: RigidDraw,
    s: RigidShiftSettings,
    where: ShiftGrid,
    pivot_world: NDArray,
    beam_world: NDArray,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], BrainShiftParams]:
    """The field of a rigid-dominant case (pivot: the sector centre) and its parameters."""
    smooth = float(rng.uniform(*s.residual_smooth_mm))
    p = _rigid_params(draw, pivot_world, beam_world, smooth, rng)
    step_mm = where.coarse.step * where.spacing_mm
    noise = smooth_noise(where.coarse.shape, smooth / step_mm, rng)
    sel, points = where.calibration_points()
    p = _calibrate_residual(p, draw.residual_mm, where, noise, sel, points)
    if draw.target_tre_mm is not None:
        p = _scale_rigid_to(p, draw.target_tre_mm, where, noise, sel, points)
    return _full_field(p, where, noise), p


__all__ = [
    "RigidDraw",
    "ShiftGrid",
    "brain_shift",
    "draw_initial_tre",
    "draw_post_resection_shift",
    "draw_rigid",
    "random_perpendicular",
    "rigid_dominant_shift",
]
