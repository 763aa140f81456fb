"""Dense correlation on coarse grids: masked pooling and SSD cost volumes (ground floor).

Shared by the deformable stage (coupled convex optimisation) and the global stage (block
matching). Tensors are ``(1, C, I, J, K)``; offsets are integer displacements in COARSE
voxels along the array axes, fixed -> moving: cost ``C(x, d)`` compares ``F(x)`` with
``M(x + d)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from remind2reg.inference.core.fields import box_smooth
from remind2reg.inference.core.losses import geman_mcclure


def pool(
    features: torch.Tensor, mask: torch.Tensor | None, grid_sp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool features ``(1, C, I, J, K)`` by ``grid_sp``; with a mask, a masked mean.

    Returns ``(pooled, weight)`` where ``weight`` ``(1, 1, Ic, Jc, Kc)`` is the fraction of
    each coarse cell inside the mask (ones without a mask). Ceil mode keeps the border.
    """
    if mask is None:
        pooled = F.avg_pool3d(features.float(), grid_sp, stride=grid_sp, ceil_mode=True)
        return pooled, torch.ones_like(pooled[:, :1])
    m = mask.float()
    weight = F.avg_pool3d(m, grid_sp, stride=grid_sp, ceil_mode=True)
    pooled = F.avg_pool3d(features.float() * m, grid_sp, stride=grid_sp, ceil_mode=True) / weight.clamp_min(
        1e-6
    )
    return pooled, weight


def displacement_offsets(disp_hw: int, device=None) -> torch.Tensor:
    """All integer offsets ``(n_d, 3)`` in ``[-disp_hw, disp_hw]^3``, (i, j, k) order."""
    r = torch.arange(-disp_hw, disp_hw + 1, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def cost_volume(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    disp_hw: int,
    weight: torch.Tensor | None = None,
    robust: float = 0.0,
) -> torch.Tensor:
    """SSD cost ``(n_d, Ic, Jc, Kc)`` of every offset: mean over channels of
    ``(F(x) - M(x + d))^2``, aggregated over 3^3 neighbourhoods twice (block matching),
    divided by its mean so that typical values are about 1.

    With a mask ``weight`` (fraction of each cell inside the US sector) the cost becomes
    ``weight * ssd + (1 - weight) * |d|^2 / disp_hw^2``: where there is no ultrasound, the
    data say nothing and the best offset is no displacement (a flat cost would otherwise
    pick an arbitrary corner offset that smoothing spreads into the sector). A tiny
    ``1e-3 |d|^2 / disp_hw^2`` everywhere breaks ties towards zero.

    ``fixed`` and ``moving`` are pooled features ``(1, C, Ic, Jc, Kc)`` on one coarse grid;
    the moving features are edge-replicated beyond the grid.
    """
    h = disp_hw
    n_i, n_j, n_k = fixed.shape[-3:]
    size = 2 * h + 1
    padded = F.pad(moving, (h, h, h, h, h, h), mode="replicate")[0]  # (C, I+2h, J+2h, K+2h)
    # All k-offsets at once: windows[c, i, j, dk, k] = padded[c, i, j, k + dk] (a view).
    windows = padded.unfold(3, n_k, 1)  # (C, I+2h, J+2h, 2h+1, K)
    fixed_k = fixed[0].unsqueeze(3)  # (C, I, J, 1, K)
    cost = torch.empty((size, size, size, n_i, n_j, n_k), dtype=torch.float32, device=fixed.device)
    for di in range(size):
        for dj in range(size):
            window = windows[:, di : di + n_i, dj : dj + n_j]  # (C, I, J, 2h+1, K)
            # cost[di, dj, dk] = mean_c (F(x) - M(x + d))^2 ; offsets run -h..h in (i, j, k) order
            cost[di, dj] = ((fixed_k - window) ** 2).mean(0).permute(2, 0, 1, 3)
    cost = cost.reshape(size**3, n_i, n_j, n_k)
    if robust > 0:  # Geman-McClure: a cell that no offset explains (a cavity) saturates instead of pulling
        cost = geman_mcclure(cost, robust * cost[(size**3) // 2].mean())
    offsets = displacement_offsets(h)
    # Spatial aggregation with the offsets as channels (two 3^3 box filters).
    cost = box_smooth(cost[None], passes=2)[0]
    cost = cost / cost.mean().clamp_min(1e-12)
    prior = ((offsets.float() ** 2).sum(1) / max(h, 1) ** 2).to(cost.device).view(-1, 1, 1, 1)
    if weight is not None:
        cost = weight[0] * cost + (1.0 - weight[0]) * prior
    return cost + 1e-3 * prior
