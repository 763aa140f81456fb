"""In-house block matching on MIND-SSC features with a least-trimmed-squares rigid/affine fit.

``reg_aladin`` matches blocks by intensity NCC, which is weak between MR and ultrasound. Here
blocks are compared by the SSD of their MIND-SSC descriptors (modality independent), using
the same cost volume as the deformable stage (:func:`remind2reg.inference.core.correlation.cost_volume`):
a block is a coarse cell of ``grid_sp`` working voxels, aggregated over its 3^3 neighbours.

One iteration, on the working grid (voxel coordinates ``(i, j, k)``):

1. warp the moving features by the current transform ``T`` (working voxel -> working voxel);
2. for every cell of the sector with textured fixed features, find the best integer offset
   ``d`` (plus a sub-voxel parabola step) within ``+-disp_hw`` cells;
3. a match pairs fixed point ``p`` (cell centre) with moving point ``T(p + d)``;
4. fit a rigid or affine ``T`` to the matches in world mm by least trimmed squares (LTS):
   refit on the ``inlier_fraction`` of matches with the smallest residuals until the set of
   inliers stops changing.

Levels run coarse to fine, a few iterations each. The result is
``fixed2moving_world``: ``moving_world = fixed2moving_world @ fixed_world``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from remind2reg.inference.core.correlation import cost_volume, displacement_offsets, pool
from remind2reg.inference.core.fields import affine_field, warp
from remind2reg.inference.core.pointfit import lts_fit
from remind2reg.inference.geometry import apply_affine
from remind2reg.inference.settings import TRANSFORMS, BlockLevel, BlockMatchSettings

log = logging.getLogger(__name__)

MIN_MATCHES = 8  # fewer matches than this end the search (a rigid fit needs 3, an affine 4)


# ----------------------------------------------------------------------------- matching


def _subvoxel(cost: torch.Tensor, best: torch.Tensor, disp_hw: int) -> torch.Tensor:
    """Offsets ``(P, 3)`` of the best cost plus a parabola step along each axis (in cells)."""
    size = 2 * disp_hw + 1
    grid = cost.reshape(size, size, size, -1)  # offsets (di, dj, dk) as in displacement_offsets
    idx = torch.stack(torch.unravel_index(best, (size, size, size)), 1)  # (P, 3)
    points = torch.arange(grid.shape[-1], device=cost.device)
    step = torch.zeros(idx.shape, dtype=torch.float32, device=cost.device)
    c0 = grid[idx[:, 0], idx[:, 1], idx[:, 2], points]
    for axis in range(3):
        lo, hi = idx.clone(), idx.clone()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        inside = (lo[:, axis] >= 0) & (hi[:, axis] < size)
        lo, hi = lo.clamp(0, size - 1), hi.clamp(0, size - 1)
        cm = grid[lo[:, 0], lo[:, 1], lo[:, 2], points]
        cp = grid[hi[:, 0], hi[:, 1], hi[:, 2], points]
        curvature = cm - 2 * c0 + cp
        ok = inside & (curvature > 1e-9)
        step[:, axis] = torch.where(ok, 0.5 * (cm - cp) / curvature.clamp_min(1e-9), 0.0).clamp(-0.5, 0.5)
    return idx.float() - disp_hw + step


@dataclass
class FixedBlocks:
    """The fixed side of one level, computed once: pooled features, sector fraction, texture."""

    features: torch.Tensor  # (1, C, Ic, Jc, Kc) masked means over grid_sp^3 cells
    weight: torch.Tensor  # (1, 1, Ic, Jc, Kc) fraction of each cell inside the sector
    texture: torch.Tensor  # (Ic * Jc * Kc,) feature variance over each cell's 3^3 neighbours

    @classmethod
    def pool(cls, fixed: torch.Tensor, mask: torch.Tensor, grid_sp: int) -> FixedBlocks:
        features, weight = pool(fixed, mask, grid_sp)
        variance = F.avg_pool3d(features**2, 3, 1, 1) - F.avg_pool3d(features, 3, 1, 1) ** 2
        return cls(features, weight, variance.sum(1).flatten())


def match_blocks(
    fixed: FixedBlocks,
    moving_warped: torch.Tensor,
    level: BlockLevel,
    settings: BlockMatchSettings,
) -> tuple[NDArray, NDArray]:
    """Block matches on the working grid: ``(p, p + d)`` in working voxels, each ``(N, 3)``.

    ``moving_warped`` are MIND features ``(1, C, I, J, K)`` on the working grid. ``p`` is a
    selected cell's centre, ``d`` its best offset. Cells are selected inside the sector,
    keeping the ``block_fraction`` with the largest feature variance (texture); cells whose
    best offset is on the search border are dropped.
    """
    sp, hw = level.grid_sp, level.disp_hw
    moving_c, _ = pool(moving_warped, None, sp)
    cost = cost_volume(fixed.features, moving_c, hw, fixed.weight)  # (n_d, Ic, Jc, Kc)
    flat = cost.reshape(cost.shape[0], -1)
    best = flat.argmin(0)
    inside = fixed.weight.flatten() >= settings.min_sector_fraction
    offsets = displacement_offsets(hw, cost.device)[best]  # (P, 3) integer cells
    on_border = (offsets.abs() >= hw).any(1)
    candidates = torch.nonzero(inside & ~on_border).flatten()
    if len(candidates) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    keep = max(1, round(settings.block_fraction * int(inside.sum())))
    # stable: cells of equal texture are kept in index order on every device
    chosen = candidates[torch.argsort(fixed.texture[candidates], descending=True, stable=True)[:keep]]
    d = _subvoxel(flat[:, chosen], best[chosen], hw)  # (N, 3) cells
    cells = torch.stack(torch.unravel_index(chosen, tuple(fixed.weight.shape[-3:])), 1).float()
    centres = cells * sp + (sp - 1) / 2.0  # cell c covers working voxels c*sp .. c*sp+sp-1
    return centres.cpu().numpy().astype(np.float64), (centres + d * sp).cpu().numpy().astype(np.float64)


@dataclass
class BlockMatchResult:
    fixed2moving_world: NDArray[np.float64]  # moving_world = fixed2moving_world @ fixed_world
    matches: int  # matches of the last fit
    inlier_rms_mm: float  # RMS residual of the LTS inliers of the last fit


def block_match(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    mask: torch.Tensor,
    working_vox2world: NDArray,
    transform: str = "rigid",
    settings: BlockMatchSettings = BlockMatchSettings(),
) -> BlockMatchResult:
    """Rigid or affine (``transform``) ``fixed2moving_world`` from MIND features on one working grid.

    An affine run starts from the rigid result (all levels rigid, then all levels affine).

    ``fixed``/``moving``: features ``(1, C, I, J, K)`` (the moving image already on the fixed
    grid); ``mask``: the US sector ``(1, 1, I, J, K)``; ``working_vox2world``: the grid's voxel
    to world matrix. The transform in working voxels is
    ``T_vox = inv(W) @ fixed2moving_world @ W`` (``W = working_vox2world``).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    w = np.asarray(working_vox2world, dtype=np.float64)
    w_inv = np.linalg.inv(w)
    shape = tuple(fixed.shape[-3:])
    f2m_world = np.eye(4)
    result = BlockMatchResult(f2m_world, 0, float("nan"))
    stages = ["rigid"] if transform == "rigid" else ["rigid", "affine"]
    moving = moving.float()
    fixed_blocks = {sp: FixedBlocks.pool(fixed, mask, sp) for sp in {lv.grid_sp for lv in settings.levels}}
    for kind in stages:
        for level in settings.levels:
            for _ in range(level.iterations):
                vox2vox = w_inv @ f2m_world @ w
                warped = warp(moving, affine_field(vox2vox, shape, moving.device))
                p, q = match_blocks(fixed_blocks[level.grid_sp], warped, level, settings)
                if len(p) < MIN_MATCHES:
                    log.warning(
                        "Block matching: only %d matches at grid_sp %d; stopping", len(p), level.grid_sp
                    )
                    return result
                # p (fixed) <-> T(q) (moving): the warped features at q are the moving ones at T q.
                src, dst = apply_affine(w, p), apply_affine(w @ vox2vox, q)  # world mm
                fit = lts_fit(src, dst, kind, settings.inlier_fraction, settings.lts_iterations)
                f2m_world = fit.matrix
                result = BlockMatchResult(f2m_world, len(p), fit.rms_inliers)
                log.debug(
                    "Block matching %s grid_sp %d: %d matches, inlier RMS %.2f mm",
                    kind,
                    level.grid_sp,
                    len(p),
                    fit.rms_inliers,
                )
    return result
