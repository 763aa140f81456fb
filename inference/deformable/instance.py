"""Adam instance optimisation of a stationary velocity field (the 'Adam' of ConvexAdam).

The field is parameterised on a coarse grid (spacing ``grid_sp`` working voxels) as a
stationary velocity ``v``; the displacement is ``exp(box^p(v))`` by scaling and squaring, so
every iterate is a diffeomorphism (no folding, up to discretisation). The loss is the masked
mean squared MIND difference between the fixed features and the moving features warped by
the upsampled displacement, plus ``lambda`` times the diffusion penalty of the coarse field.
"""

from __future__ import annotations

import torch

from remind2reg.inference.core.correlation import pool
from remind2reg.inference.core.fields import (
    box_smooth,
    pool_cells,
    resize_field,
    scaling_and_squaring,
    upsample_cells,
    warp,
)
from remind2reg.inference.core.losses import diffusion_penalty, masked_ssd, robust_masked_ssd
from remind2reg.inference.settings import AdamSettings


def coarse_shape(shape: tuple[int, ...], grid_sp: int) -> tuple[int, int, int]:
    return tuple(max(2, -(-n // grid_sp)) for n in shape[-3:])  # type: ignore[return-value]


def velocity_from_displacement(disp: torch.Tensor, steps: int, iterations: int = 4) -> torch.Tensor:
    """A velocity whose exponential approximates ``disp``: ``v <- v + (disp - exp(v))``."""
    v = disp.clone()
    for _ in range(iterations):
        v = v + (disp - scaling_and_squaring(v, steps))
    return v


def instance_optimise(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    init: torch.Tensor,
    mask: torch.Tensor | None,
    settings: AdamSettings = AdamSettings(),
) -> tuple[torch.Tensor, list[float]]:
    """Refine ``init`` (``(1, 3, I, J, K)`` working voxels) by Adam; returns (field, losses).

    ``fixed``/``moving`` are features ``(1, C, I, J, K)``; ``mask`` ``(1, 1, I, J, K)``
    restricts the similarity (the US sector).
    """
    shape = tuple(fixed.shape[-3:])
    k = max(1, settings.feature_pool)
    # The similarity is evaluated on features averaged over k^3 blocks (cell-centred grid).
    fixed_f, weight = pool(fixed.float(), mask, k)
    moving_f, _ = pool(moving.float(), None, k)
    if mask is None:
        weight = torch.ones_like(fixed_f[:, :1])
    pooled_shape = tuple(fixed_f.shape[-3:])
    cshape = coarse_shape(pooled_shape, max(1, settings.grid_sp // k))
    with torch.no_grad():
        v0 = velocity_from_displacement(resize_field(pool_cells(init, k), cshape), settings.squaring_steps)
    velocity = torch.nn.Parameter(v0)
    if settings.robust > 0:  # the Geman-McClure scale: `robust` times the mean residual at the start
        with torch.no_grad():
            start = ((fixed_f - warp(moving_f, resize_field(pool_cells(init, k), pooled_shape))) ** 2).mean(
                1, keepdim=True
            )
            scale = settings.robust * (start * weight).sum() / weight.sum().clamp_min(1.0)
    optimiser = torch.optim.Adam([velocity], lr=settings.learning_rate)

    def displacement() -> tuple[torch.Tensor, torch.Tensor]:
        coarse = scaling_and_squaring(
            box_smooth(velocity, settings.smoothing_passes), settings.squaring_steps
        )
        return coarse, resize_field(coarse, pooled_shape)

    losses = []
    for _ in range(settings.iterations):
        optimiser.zero_grad()
        coarse, disp = displacement()
        warped = warp(moving_f, disp)
        if settings.robust > 0:
            similarity = robust_masked_ssd(fixed_f, warped, weight, scale)
        else:
            similarity = masked_ssd(fixed_f, warped, weight)
        loss = similarity + settings.regularisation * diffusion_penalty(coarse)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        _, disp = displacement()
        return upsample_cells(disp, k, shape), losses
