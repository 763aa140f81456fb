"""Rigid registration by optimising a feature similarity, from several starting rotations.

Dense displacement search (the convex stage, its rigid projection, MIND block matching) does
not see a large rotation: the descriptors of a structure rotated by 10-15 degrees no longer
match under a translation. ``reg_aladin`` copes by iterating rigid updates. Here the six rigid
parameters are optimised directly, coarse to fine, from a few starting rotations:

1. a global translation search: the SSD cost volume of the MIND features pooled into
   ``search_grid_sp`` cells over +-``search_hw`` cells
   (:func:`~remind2reg.inference.core.correlation.cost_volume`), summed over the sector;
2. screening: from each start rotation (the identity, and +-``start_angles_deg`` about each
   world axis through the sector centroid ``c``) and that translation, Adam optimises the
   rotation vector ``w`` (radians) and translation ``t`` (mm) of
   ``M(w, t) = T(c + t) R(w) T(-c)`` on features pooled by 4, minimising the sector-weighted
   MIND SSD;
3. the start with the lowest screening cost goes on: MIND is not rotation invariant, so the
   MR is rotated by the screened rotation and its features are recomputed; the small residual
   is optimised on features pooled by 2, then at the working resolution.

Direction: the MR rotated by the screened ``M0`` is ``moving(M0 y)`` (world); warped by the
residual it becomes ``moving(M0 M x)``, so ``fixed2moving_world = M0 @ M``
(``moving_world = fixed2moving_world @ fixed_world``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from remind2reg.inference.core.correlation import cost_volume, displacement_offsets, pool
from remind2reg.inference.core.fields import affine_field, sample, warp
from remind2reg.inference.core.mind import mind_ssc
from remind2reg.inference.settings import MindSettings, RigidSearchSettings

log = logging.getLogger(__name__)


def rotation_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: the 3x3 rotation of the rotation vector ``w`` (radians), differentiable at 0."""
    theta2 = (w * w).sum()
    k = torch.stack(
        [
            torch.stack([w.new_zeros(()), -w[2], w[1]]),
            torch.stack([w[2], w.new_zeros(()), -w[0]]),
            torch.stack([-w[1], w[0], w.new_zeros(())]),
        ]
    )
    theta = torch.sqrt(theta2 + 1e-12)
    a = torch.where(theta2 > 1e-8, torch.sin(theta) / theta, 1 - theta2 / 6)
    b = torch.where(theta2 > 1e-8, (1 - torch.cos(theta)) / (theta2 + 1e-12), 0.5 - theta2 / 24)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def rigid_about(w: torch.Tensor, t: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """4x4 ``T(centre + t) R(w) T(-centre)`` (world mm), differentiable in ``w`` and ``t``."""
    r = rotation_matrix(w)
    out = torch.eye(4, dtype=w.dtype, device=w.device)
    out = out.clone()
    out[:3, :3] = r
    out[:3, 3] = centre + t - r @ centre
    return out


def affine_warp(moving: torch.Tensor, vox2vox: torch.Tensor) -> torch.Tensor:
    """``moving(A x)`` on the grid of ``moving`` for a 4x4 ``A`` (voxels -> voxels), differentiable in ``A``."""
    shape = tuple(moving.shape[-3:])
    axes = [torch.arange(n, dtype=vox2vox.dtype, device=moving.device) for n in shape]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).reshape(3, -1)  # (3, P) rows (i, j, k)
    moved = (vox2vox[:3, :3] @ x + vox2vox[:3, 3:4]).reshape(1, 3, *shape)
    return sample(moving, moved.to(moving.dtype))


@dataclass(frozen=True)
class RigidResult:
    fixed2moving_world: NDArray[np.float64]
    cost: float  # final sector-weighted MIND SSD of the winning start
    start_deg: tuple[float, float, float]  # the winning start rotation (rotation vector, degrees)
    costs: tuple[float, ...]  # the final cost of every start


def start_rotations(angles_deg: tuple[float, ...]) -> list[NDArray[np.float64]]:
    """Rotation vectors (radians): zero, and +-a about each world axis for every ``a``."""
    starts = [np.zeros(3)]
    for a in angles_deg:
        for axis in range(3):
            for sign in (1.0, -1.0):
                v = np.zeros(3)
                v[axis] = sign * math.radians(a)
                starts.append(v)
    return starts


def _translation_search(
    fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, grid_sp: int, hw: int
) -> torch.Tensor:
    """The integer translation (working voxels, (i, j, k)) minimising the sector-summed cost volume."""
    fixed_c, weight = pool(fixed, mask, grid_sp)
    moving_c, _ = pool(moving, None, grid_sp)
    cost = cost_volume(fixed_c, moving_c, hw, weight)  # (n_d, Ic, Jc, Kc)
    total = (cost * weight[0]).flatten(1).sum(1)
    return displacement_offsets(hw, fixed.device)[int(total.argmin())] * grid_sp


@dataclass(frozen=True)
class _Level:
    """The fixed side of one level: sector points (level voxels), their features and weights."""

    factor: int  # working voxels per level voxel
    points: torch.Tensor  # (3, P) level-voxel coordinates (i, j, k) of the sector cells used
    fixed: torch.Tensor  # (C, P) pooled US features there
    weight: torch.Tensor  # (P,) sector fraction of each cell
    to_working: torch.Tensor  # 4x4: level voxel c -> working voxel f c + (f - 1) / 2


def _level(fixed: torch.Tensor, mask: torch.Tensor, factor: int, stride: int) -> _Level:
    pooled, weight = pool(fixed, mask, factor) if factor > 1 else (fixed, mask)
    inside = torch.nonzero(weight[0, 0] > 0)[::stride]  # (P, 3), every `stride`-th sector cell
    idx = tuple(inside.T)
    s = torch.diag(torch.tensor([float(factor)] * 3 + [1.0]))
    s[:3, 3] = (factor - 1) / 2.0
    return _Level(factor, inside.T.float(), pooled[0][(slice(None), *idx)], weight[0, 0][idx], s)


class _Problem:
    """The fixed side of the search, computed once: sector points and features per level, the
    grid and the sector centroid. Costs are evaluated at sector cells only."""

    def __init__(
        self, us_features: torch.Tensor, mask: torch.Tensor, working_vox2world: NDArray, fine_stride: int
    ):
        self.fixed, self.mask = us_features.float(), mask.float()
        self.w = torch.as_tensor(working_vox2world, dtype=torch.float64)
        self.w_inv = torch.linalg.inv(self.w)
        # The 4x4 and parameter algebra stays on the CPU in float64; only the features and the
        # sector points live on the device (CUDA: the mean sector voxel comes back to the CPU).
        idx = torch.nonzero(mask[0, 0] > 0).double().mean(0).cpu()
        self.centre = (self.w[:3, :3] @ idx + self.w[:3, 3]).to(torch.float64)  # world mm
        self.levels = {f: _level(self.fixed, self.mask, f, fine_stride if f == 1 else 1) for f in (1, 2, 4)}
        self._moving: dict[tuple[int, int], torch.Tensor] = {}

    def vox2vox(self, world: torch.Tensor) -> torch.Tensor:
        return self.w_inv @ world @ self.w

    def cost(self, moving: torch.Tensor, world: torch.Tensor, factor: int) -> torch.Tensor:
        """Sector-weighted MIND SSD of the moving features warped by ``world`` (fixed2moving):
        ``sum w (F(c) - M(A c))^2 / (sum w C)`` over the level's sector cells ``c``."""
        level = self.levels[factor]
        key = (id(moving), factor)
        if key not in self._moving:  # pooled once per feature set and level, not per step
            self._moving = {key: pool(moving, None, factor)[0] if factor > 1 else moving.float()}
        s = level.to_working
        a = torch.linalg.inv(s) @ self.vox2vox(world).float() @ s  # level voxel -> level voxel
        a = a.to(level.points.device)  # CPU algebra -> the points' device (gradients follow)
        moved = a[:3, :3] @ level.points + a[:3, 3:4]  # (3, P)
        values = sample(self._moving[key], moved.reshape(1, 3, -1, 1, 1))  # (1, C, P, 1, 1)
        diff = (level.fixed - values[0, :, :, 0, 0]) ** 2  # (C, P)
        return (diff * level.weight).sum() / (level.weight.sum().clamp_min(1.0) * diff.shape[0])


def _optimise(
    problem: _Problem, moving: torch.Tensor, w0: torch.Tensor, t0: torch.Tensor, level: int, iterations: int,
    settings: RigidSearchSettings,
) -> tuple[torch.Tensor, torch.Tensor, float]:  # fmt: skip
    """Adam on the rotation vector ``w`` (radians) and translation ``t`` (mm) of ``M(w, t)`` at
    ``level`` (features pooled by 4 or 2, or 1: the working grid); returns (w, t, final cost)."""
    w = w0.clone().to(torch.float64).requires_grad_(True)
    t = t0.clone().to(torch.float64).requires_grad_(True)
    lrs = [
        {"params": [w], "lr": math.radians(settings.lr_rotation_deg)},
        {"params": [t], "lr": settings.lr_translation_mm},
    ]
    optimiser = torch.optim.Adam(lrs)
    with torch.enable_grad():  # the stage runs under no_grad; this optimisation needs gradients
        for _ in range(iterations):
            optimiser.zero_grad()
            loss = problem.cost(moving, rigid_about(w, t, problem.centre), level)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return w.detach(), t.detach(), float(problem.cost(moving, rigid_about(w, t, problem.centre), level))


@dataclass
class _Start:
    rotvec: NDArray[np.float64]  # the start rotation (radians)
    w: torch.Tensor
    t: torch.Tensor
    cost: float


def rigid_search(
    us_features: torch.Tensor,
    mask: torch.Tensor,
    mr: torch.Tensor,
    working_vox2world: NDArray,
    mind: MindSettings,
    settings: RigidSearchSettings = RigidSearchSettings(),
) -> RigidResult:
    """``fixed2moving_world`` of the MR image ``mr`` ``(1, 1, I, J, K)`` (working grid) by the
    multi-start search of the module docstring; ``us_features``/``mask`` are the US's MIND
    features and sector on the same grid."""
    problem = _Problem(us_features, mask, working_vox2world, settings.fine_stride)
    shape = tuple(mr.shape[-3:])
    with torch.no_grad():
        moving = mind_ssc(mr.float(), mind.radius, mind.dilation)
        shift = _translation_search(
            problem.fixed, moving, problem.mask, settings.search_grid_sp, settings.search_hw
        )
    # A translation of the moving features by s working voxels is W_lin s in world mm.
    t0 = problem.w[:3, :3] @ shift.double().cpu()
    starts = []
    for rotvec in start_rotations(settings.start_angles_deg):
        w, t, cost = _optimise(
            problem, moving, torch.as_tensor(rotvec), t0, 4, settings.screen_iterations, settings
        )
        starts.append(_Start(rotvec, w, t, cost))
        log.debug("Rigid search: start %s deg, screening cost %.5f", np.degrees(rotvec).round(1), cost)
    best = min(starts, key=lambda s: s.cost)
    # MIND is not rotation invariant: the finer levels use the features of the MR rotated by
    # the screening's rotation, and optimise the small residual M(w, t) after it.
    start = rigid_about(best.w, torch.zeros(3, dtype=torch.float64), problem.centre)
    with torch.no_grad():
        rotated = warp(mr.float(), affine_field(problem.vox2vox(start).numpy(), shape, mr.device))  # type: ignore[arg-type]
        moving = mind_ssc(rotated, mind.radius, mind.dilation)
    w, t, _ = _optimise(problem, moving, torch.zeros(3), best.t, 2, settings.coarse_iterations, settings)
    w, t, cost = _optimise(problem, moving, w, t, 1, settings.fine_iterations, settings)
    with torch.no_grad():
        world = (start @ rigid_about(w, t, problem.centre)).numpy()  # fixed2moving = M0 @ M(w, t)
    return RigidResult(world, cost, tuple(np.degrees(best.w.numpy())), tuple(s.cost for s in starts))  # type: ignore[arg-type]
