"""A dense field projected onto the rigid (or affine) transform that best explains it (ground floor).

The organisers' ConvexAdam-Rigid and MCPO (ReMIND2Reg 2025, 1st) fit a rigid transform to the
dense displacement of a convex level by least trimmed squares, inside the US sector: point
``p`` (a voxel centre) is matched with ``p + u(p)``, both in world mm, and
:func:`~remind2reg.inference.core.pointfit.lts_fit` keeps the best ``inlier_fraction`` of
the matches. The result is ``fixed2moving_world``: ``moving_world = fixed2moving_world @ fixed_world``.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from remind2reg.inference.core.fields import affine_field
from remind2reg.inference.core.pointfit import LtsFit, lts_fit
from remind2reg.inference.geometry import apply_affine


def project_field(
    disp: torch.Tensor,
    mask: torch.Tensor,
    working_vox2world: NDArray,
    transform: str = "rigid",
    inlier_fraction: float = 0.5,
    iterations: int = 15,
    max_points: int = 20_000,
) -> LtsFit:
    """The LTS fit of ``x -> x + disp(x)`` over the voxels where ``mask > 0``.

    ``disp`` ``(1, 3, I, J, K)`` and ``mask`` ``(1, 1, I, J, K)`` on the working grid (voxels,
    fixed -> moving); the points are subsampled evenly to at most ``max_points``. The returned
    matrix maps fixed world mm to moving world mm.
    """
    if disp.dim() != 5 or disp.shape[1] != 3 or mask.shape[2:] != disp.shape[2:]:
        raise ValueError(
            f"expected disp (1, 3, I, J, K) and mask (1, 1, I, J, K), got {tuple(disp.shape)}, {tuple(mask.shape)}"
        )
    inside = torch.nonzero(mask[0, 0] > 0)  # (P, 3) voxel indices (i, j, k)
    if len(inside) < 10:
        raise ValueError(f"only {len(inside)} voxels inside the mask: nothing to fit")
    step = max(1, len(inside) // max_points)
    points = inside[::step]
    u = disp[0].float()[:, points[:, 0], points[:, 1], points[:, 2]].T  # (P, 3) voxels
    src = points.double().cpu().numpy()
    dst = src + u.double().cpu().numpy()
    w = np.asarray(working_vox2world, dtype=np.float64)
    return lts_fit(apply_affine(w, src), apply_affine(w, dst), transform, inlier_fraction, iterations)


def rigid_part(
    disp: torch.Tensor, mask: torch.Tensor, working_vox2world: NDArray, inlier_fraction: float = 0.5
) -> torch.Tensor:
    """The field ``(1, 3, I, J, K)`` (working voxels, fixed -> moving) of the rigid transform
    :func:`project_field` fits to ``disp`` where ``mask > 0``: ``r(x) = W^-1 M W x - x``, with
    ``M`` the fit in world mm and ``W = working_vox2world``."""
    w = np.asarray(working_vox2world, dtype=np.float64)
    fit = project_field(disp, mask, w, "rigid", inlier_fraction)
    vox2vox = np.linalg.inv(w) @ fit.matrix @ w  # working voxels: x -> W^-1 M W x
    return affine_field(vox2vox, tuple(disp.shape[2:]), disp.device).to(disp.dtype)  # type: ignore[arg-type]


def shrink_toward_rigid(
    disp: torch.Tensor,
    mask: torch.Tensor,
    working_vox2world: NDArray,
    residual_weight: float,
    inlier_fraction: float = 0.5,
) -> torch.Tensor:
    """``r + residual_weight * (disp - r)``: ``disp`` with its non-rigid part scaled.

    ``r`` is :func:`rigid_part` of ``disp`` (least trimmed squares over ``mask``, fitted in
    world mm, so that anisotropic working voxels stay rigid in mm). ``disp`` ``(1, 3, I, J, K)``
    working voxels, fixed -> moving; ``residual_weight`` 1 returns ``disp`` itself, 0 the
    rigid field alone.
    """
    if not 0.0 <= residual_weight <= 1.0:
        raise ValueError(f"residual_weight must lie in [0, 1], got {residual_weight}")
    if residual_weight == 1.0:
        return disp
    rigid = rigid_part(disp, mask, working_vox2world, inlier_fraction)
    return rigid + residual_weight * (disp - rigid)
