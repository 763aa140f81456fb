"""Known brain-shift deformations (the ground truth of the synthetic benchmark).

The ground truth maps each FIXED (intra-operative) point to its MOVING (pre-operative) point:
``moving_world = rigid(phi(fixed_world))`` with ``phi = exp(v)`` the diffeomorphism of a
stationary velocity field ``v`` (integrated by scaling and squaring) made of

* **sinking** under the craniotomy: the brain sinks along gravity, most at the surface under
  the probe, decaying with depth and with lateral distance from the beam axis;
* **cavity collapse**: tissue around the resected tumour falls inwards, so a fixed point near
  the cavity came from further out (a radial field around the cavity centre);
* a smooth random **residual** (Gaussian-filtered noise);

and ``rigid`` a small rotation about the craniotomy plus a translation: the residual
misalignment of neuronavigation. All lengths in mm; the field is returned in the challenge
format (fixed-grid voxels along array axes, ``warped = moving(x + u(x))``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

from remind2reg.inference.geometry import apply_affine


@dataclass(frozen=True)
class BrainShiftParams:
    """Magnitudes of the components, before the overall scale is calibrated."""

    sink_mm: float  # peak sinking at the surface under the probe
    sink_lateral_mm: float  # Gaussian width of sinking across the beam
    sink_decay_mm: float  # exponential decay of sinking with depth
    gravity_world: tuple[float, float, float]  # unit direction the brain sinks in (world)
    cavity_mm: float  # peak radial collapse around the cavity (0 without resection)
    cavity_centre_world: tuple[float, float, float]
    cavity_radius_mm: float
    residual_mm: float  # RMS of the smooth residual velocity
    residual_smooth_mm: float
    rotation_deg: float
    rotation_axis_world: tuple[float, float, float]
    translation_world: tuple[float, float, float]  # mm
    pivot_world: tuple[float, float, float]  # centre of rotation (the craniotomy)
    apex_world: tuple[float, float, float]  # probe position on the brain surface
    beam_world: tuple[float, float, float]  # unit beam direction into the brain

    def scaled(self, factor: float) -> BrainShiftParams:
        """All magnitudes multiplied by ``factor`` (shapes and directions unchanged)."""
        return BrainShiftParams(
            **{
                **self.__dict__,
                "sink_mm": self.sink_mm * factor,
                "cavity_mm": self.cavity_mm * factor,
                "residual_mm": self.residual_mm * factor,
                "rotation_deg": self.rotation_deg * factor,
                "translation_world": tuple(np.asarray(self.translation_world) * factor),
            }
        )


def rigid_fixed2moving_world(p: BrainShiftParams) -> NDArray[np.float64]:
    """4x4 ``fixed2moving_world`` of the rigid part: ``q = R (x - pivot) + pivot + t``."""
    rot = Rotation.from_rotvec(np.deg2rad(p.rotation_deg) * np.asarray(p.rotation_axis_world)).as_matrix()
    pivot = np.asarray(p.pivot_world)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = pivot - rot @ pivot + np.asarray(p.translation_world)
    return out


def velocity_world(
    points_world: NDArray, p: BrainShiftParams, residual_noise: NDArray | None = None
) -> NDArray[np.float64]:
    """Velocity (mm) at world points ``(..., 3)`` of the sinking and cavity components.

    ``residual_noise`` (same leading shape, unit RMS, already smooth) adds the residual.
    """
    pts = np.asarray(points_world, dtype=np.float64)
    rel = pts - np.asarray(p.apex_world)
    beam = np.asarray(p.beam_world)
    depth = rel @ beam
    lateral = np.linalg.norm(rel - depth[..., None] * beam, axis=-1)
    sink = (
        p.sink_mm
        * np.exp(-(lateral**2) / (2 * p.sink_lateral_mm**2))
        * np.exp(-np.clip(depth, 0, None) / p.sink_decay_mm)
    )
    # Intra-op tissue sank by +s*g, so the pre-op point of a fixed point lies at -s*g.
    v = -sink[..., None] * np.asarray(p.gravity_world)
    if p.cavity_mm > 0:
        radial = pts - np.asarray(p.cavity_centre_world)
        r2 = (radial**2).sum(-1, keepdims=True)
        sigma = p.cavity_radius_mm
        # Peak magnitude cavity_mm at r = sigma; outward: the pre-op point was further out.
        v = v + p.cavity_mm * np.sqrt(np.e) * radial / sigma * np.exp(-r2 / (2 * sigma**2))
    if residual_noise is not None:
        v = v + p.residual_mm * residual_noise
    return v


def smooth_noise(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Gaussian-filtered white noise, 3 components, normalised to unit RMS: ``(*shape, 3)``."""
    noise = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect") for _ in range(3)], -1
    )
    return noise / max(float(np.sqrt((noise**2).sum(-1).mean())), 1e-12)


def scaling_and_squaring(velocity_vox: NDArray, coarse_step: float, steps: int = 7) -> NDArray[np.float64]:
    """Displacement of ``exp(v)`` on a coarse grid.

    ``velocity_vox`` has shape ``(m1, m2, m3, 3)``: vectors in FINE voxels at coarse points
    whose fine-voxel position is ``coarse_index * coarse_step``. ``u <- u + u(x + u)`` after
    dividing ``v`` by ``2**steps``; sampling is trilinear with edge clamping.
    """
    u = np.asarray(velocity_vox, dtype=np.float64) / 2**steps
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in u.shape[:3]], indexing="ij"), 0)
    for _ in range(steps):
        coords = grid + np.moveaxis(u, -1, 0) / coarse_step  # coarse-grid coordinates of x + u(x)
        u = u + np.stack(
            [ndimage.map_coordinates(u[..., c], coords, order=1, mode="nearest") for c in range(3)], -1
        )
    return u


def upsample(coarse: NDArray, coarse_step: float, shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """Trilinear upsampling: ``fine[x] = coarse[x / coarse_step]`` per component."""
    out = np.empty((*shape, coarse.shape[-1]), dtype=np.float32)
    for c in range(coarse.shape[-1]):
        out[..., c] = ndimage.affine_transform(
            coarse[..., c].astype(np.float32),
            np.full(3, 1.0 / coarse_step),
            output_shape=shape,
            order=1,
            mode="nearest",
        )
    return out


@dataclass(frozen=True)
class CoarseGrid:
    """Coarse sample points of a fine grid: coarse index ``c`` is fine voxel ``c * step``."""

    fine_shape: tuple[int, int, int]
    step: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(np.ceil((n - 1) / self.step)) + 1 for n in self.fine_shape)  # type: ignore[return-value]

    def fine_voxels(self) -> NDArray[np.float64]:
        axes = [np.arange(n, dtype=np.float64) * self.step for n in self.shape]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


def nonrigid_displacement_coarse(
    p: BrainShiftParams, fixed_vox2world: NDArray, coarse: CoarseGrid, residual_noise: NDArray
) -> NDArray[np.float64]:
    """``phi(x) - x`` of the non-rigid part on the coarse grid, in fine voxels ``(*coarse.shape, 3)``."""
    world = apply_affine(fixed_vox2world, coarse.fine_voxels().reshape(-1, 3)).reshape(*coarse.shape, 3)
    v_mm = velocity_world(world, p, residual_noise)
    world2vox_linear = np.linalg.inv(np.asarray(fixed_vox2world)[:3, :3])
    return scaling_and_squaring(v_mm @ world2vox_linear.T, coarse.step)


def magnitude_mm(disp_vox: NDArray, fixed_vox2world: NDArray) -> NDArray[np.float64]:
    """``|u|`` in mm of voxel displacements ``(..., 3)``."""
    return np.linalg.norm(np.asarray(disp_vox) @ np.asarray(fixed_vox2world)[:3, :3].T, axis=-1)
