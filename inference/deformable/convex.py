"""Coupled convex optimisation of dense correlation (ConvexAdam, Siebert et al. 2021).

On a coarse grid of spacing ``grid_sp`` (voxels of the working grid), an SSD cost volume is
computed over all integer displacements ``d`` in ``[-disp_hw, disp_hw]^3`` coarse voxels.
Coupled convex optimisation then alternates between the best displacement per point and a
smoothed field, with growing coupling weights:

    u_{t+1}(x) = argmin_d  C(x, d) + w_t |d - box(u_t)(x)|^2

Fields returned here are ``(1, 3, Ic, Jc, Kc)`` in COARSE voxels along array axes, with the
challenge's direction: fixed point ``x`` corresponds to moving point ``x + u(x)``.
"""

from __future__ import annotations

import numpy as np
import torch

from remind2reg.inference.core.correlation import cost_volume, displacement_offsets, pool
from remind2reg.inference.core.fields import box_smooth, compose, upsample_cells, warp
from remind2reg.inference.core.projection import rigid_part
from remind2reg.inference.settings import ConvexSettings


def coupled_convex(
    cost: torch.Tensor,
    disp_hw: int,
    coefficients: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    average_iterates: bool = False,
    chunk: int = 8192,
) -> torch.Tensor:
    """Coupled convex optimisation of a cost volume ``(n_d, Ic, Jc, Kc)``.

    Returns the smoothed field ``(1, 3, Ic, Jc, Kc)`` in coarse voxels. With
    ``average_iterates`` the result is the mean of the smoothed iterates (MCBO's weight
    balancing) instead of the last one.
    """
    n_d, *shape = cost.shape
    offsets = displacement_offsets(disp_hw, cost.device)  # (n_d, 3)
    flat = cost.reshape(n_d, -1)  # (n_d, P)

    def to_field(index: torch.Tensor) -> torch.Tensor:
        return box_smooth(offsets[index].T.reshape(1, 3, *shape))

    smooth = to_field(flat.argmin(0))
    iterates = []
    for w in coefficients:
        target = smooth.reshape(3, -1).T  # (P, 3)
        index = torch.empty(flat.shape[1], dtype=torch.long, device=cost.device)
        for start in range(0, flat.shape[1], chunk):
            stop = min(start + chunk, flat.shape[1])
            # penalty[d, p] = |offset_d - target_p|^2
            penalty = torch.cdist(offsets, target[start:stop]) ** 2
            index[start:stop] = (flat[:, start:stop] + w * penalty).argmin(0)
        smooth = to_field(index)
        iterates.append(smooth)
    return torch.stack(iterates).mean(0) if average_iterates else smooth


def inverse_consistent(forward: torch.Tensor, backward: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Symmetrise a forward (fixed->moving) and a backward (moving->fixed) field.

    Both are ``(1, 3, Ic, Jc, Kc)`` in coarse voxels on one grid. Each iteration sets
    ``u1 <- (u1 - u2(x + u1(x))) / 2`` and ``u2 <- (u2 - u1(x + u2(x))) / 2``, which drives
    ``u1 + u2(x + u1(x))`` (the round trip) towards zero. Returns the forward field.
    """
    u1, u2 = forward, backward
    for _ in range(iterations):
        u1, u2 = 0.5 * (u1 - warp(u2, u1)), 0.5 * (u2 - warp(u1, u2))
    return u1


def convex_levels(
    fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, settings: ConvexSettings
) -> torch.Tensor:
    """Coarse-to-fine coupled convex levels; returns a working-grid field ``(1, 3, I, J, K)``.

    ``fixed``/``moving``: features ``(1, C, I, J, K)`` on the working grid; ``mask`` the US
    sector ``(1, 1, I, J, K)``. Each level searches a residual ``r`` on the moving features
    warped by the field so far and composes it: ``d <- r(x) + d(x + r(x))``. With
    ``combine = "weighted"`` the result is the weighted mean of the levels' fields (MCBO).
    With ``rigid_projection`` each level's field is replaced by its least-trimmed-squares rigid
    fit inside the sector (MCPO, ReMIND2Reg 2025): the working grid is isotropic, so a rigid
    map of working voxels is rigid in mm.
    """
    shape = tuple(fixed.shape[-3:])
    disp = torch.zeros((1, 3, *shape), device=fixed.device)
    totals, weights = [], []
    for level in settings.levels:
        fixed_c, weight = pool(fixed, mask, level.grid_sp)
        moving_c, _ = pool(warp(moving.float(), disp), None, level.grid_sp)
        cost = cost_volume(fixed_c, moving_c, level.disp_hw, weight, settings.robust)
        residual_c = coupled_convex(cost, level.disp_hw, settings.coefficients, settings.average_iterates)
        if settings.inverse_consistent:
            backward = coupled_convex(
                cost_volume(moving_c, fixed_c, level.disp_hw, weight, settings.robust),
                level.disp_hw,
                settings.coefficients,
                settings.average_iterates,
            )
            residual_c = inverse_consistent(residual_c, backward, settings.inverse_iterations)
        residual = upsample_cells(residual_c, level.grid_sp, shape)  # type: ignore[arg-type]
        disp = compose(residual, disp)  # x -> x + r(x) -> moving via the previous field
        if settings.rigid_projection:  # MCPO: the level's field replaced by its LTS rigid fit
            disp = rigid_part(disp, mask, np.eye(4), settings.projection_inlier_fraction)
        totals.append(disp)
        weights.append(level.weight)
    if settings.combine == "weighted":
        w = torch.tensor(weights, device=disp.device)
        return (torch.stack(totals) * (w / w.sum()).view(-1, 1, 1, 1, 1, 1)).sum(0)
    return disp
