"""Adam instance optimisation of a stationary velocity field (the 'Adam' of ConvexAdam).

The field is parameterised on a coarse grid (spacing ``grid_sp`` working voxels) as a
stationary velocity ``v``; the displacement is ``exp(box^p(v))`` by scaling and squaring, so
every iterate is a diffeomorphism (no folding, up to discretisation). The loss is the masked
mean squared MIND difference between the fixed features and the moving features warped by
the upsampled displacement, plus ``lambda`` times the diffusion penalty of the coarse field.

Only the moving side is interpolated, and trilinear interpolation lowers the energy of rough
features most at half-voxel phases: on the simulated iUS the SSD at the truth is 6-12 % above
its value half a pooled voxel away (``benchmarks/similarity_scan.py --pool 2 --step 0.25``).
``jitter_sampling`` compares both sides at one random sub-voxel offset per iteration
(:func:`sample_pair`), which removes that preference on average; ``schedule = "linear"`` lets
the last iterates settle despite the sampling noise.
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
from remind2reg.inference.core.mind import gaussian_smooth
from remind2reg.inference.settings import AdamSettings


def coarse_shape(shape: tuple[int, ...], grid_sp: int) -> tuple[int, int, int]:
    return tuple(max(2, -(-n // grid_sp)) for n in shape[-3:])  # type: ignore[return-value]


def velocity_from_displacement(disp: torch.Tensor, steps: int, iterations: int = 4) -> torch.Tensor:
    """A velocity whose exponential approximates ``disp``: ``v <- v + (disp - exp(v))``."""
    v = disp.clone()
    for _ in range(iterations):
        v = v + (disp - scaling_and_squaring(v, steps))
    return v


def compared_features(
    fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None, settings: AdamSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fixed, moving, weight)`` as the similarity sees them: features ``(1, C, I, J, K)``
    averaged over ``feature_pool``^3 blocks (cell-centred grid; the fixed one as a masked mean,
    ``weight`` the share of each block inside ``mask``, ones without a mask), then smoothed by
    ``feature_smoothing`` pooled voxels when that is > 0."""
    k = max(1, settings.feature_pool)
    fixed_f, weight = pool(fixed.float(), mask, k)
    moving_f, _ = pool(moving.float(), None, k)
    if mask is None:
        weight = torch.ones_like(fixed_f[:, :1])
    if settings.feature_smoothing > 0:
        # Band-limit both before the moving one is interpolated: then a sub-voxel shift no
        # longer lowers the moving features' energy (the interpolation artefact of the SSD).
        fixed_f = gaussian_smooth(fixed_f, settings.feature_smoothing, weight)
        moving_f = gaussian_smooth(moving_f, settings.feature_smoothing)
    return fixed_f, moving_f, weight


def sample_pair(
    fixed: torch.Tensor,
    weight: torch.Tensor,
    moving: torch.Tensor,
    disp: torch.Tensor,
    settings: AdamSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed features, their weight and the moving features warped by ``disp``, as the
    similarity compares them at this iteration.

    Without jitter: at the voxel centres ``x``, ``moving(x + u(x))`` (only the moving side is
    interpolated). With ``jitter_sampling``: at ``x + o`` for one offset ``o`` drawn uniformly
    in ``[-1/2, 1/2)^3`` voxels, ``fixed(x + o)`` against ``moving(x + o + u(x))`` (``u`` taken at
    ``x``: the field is smooth on the scale of a voxel). Trilinear interpolation lowers the
    energy of rough features most at half-voxel phases; interpolating only the moving side
    therefore makes the SSD prefer half-voxel shifts (the interpolation artefact). Averaged
    over the offsets both sides are smoothed alike.
    """
    if not settings.jitter_sampling:
        return fixed, weight, warp(moving, disp)
    offset = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5).to(disp.dtype)
    constant = offset.to(disp.device).view(1, 3, 1, 1, 1).expand_as(disp)
    return warp(fixed, constant), warp(weight, constant), warp(moving, disp + constant)


def lr_factor(step: int, settings: AdamSettings) -> float:
    """The learning rate of step ``step`` (from 0) over ``settings.learning_rate``: the warm-up's
    ``min(1, (step + 1) / warmup)`` times the schedule's ``1 - step / iterations`` ("linear":
    the last step is lr / iterations) or 1 ("constant")."""
    factor = 1.0 - step / max(settings.iterations, 1) if settings.schedule == "linear" else 1.0
    if settings.warmup > 0:
        factor *= min(1.0, (step + 1) / settings.warmup)
    return factor


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
    fixed_f, moving_f, weight = compared_features(fixed, moving, mask, settings)
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
    optimiser = torch.optim.Adam([velocity], lr=settings.learning_rate, eps=settings.eps)
    scheduler = None
    if settings.schedule == "linear" or settings.warmup > 0:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: lr_factor(i, settings))

    def displacement() -> tuple[torch.Tensor, torch.Tensor]:
        coarse = scaling_and_squaring(
            box_smooth(velocity, settings.smoothing_passes), settings.squaring_steps
        )
        return coarse, resize_field(coarse, pooled_shape)

    generator = torch.Generator().manual_seed(settings.jitter_seed)
    losses = []
    for _ in range(settings.iterations):
        optimiser.zero_grad()
        coarse, disp = displacement()
        fixed_i, weight_i, warped = sample_pair(fixed_f, weight, moving_f, disp, settings, generator)
        if settings.robust > 0:
            similarity = robust_masked_ssd(fixed_i, warped, weight_i, scale)
        else:
            similarity = masked_ssd(fixed_i, warped, weight_i)
        loss = similarity + settings.regularisation * diffusion_penalty(coarse)
        loss.backward()
        optimiser.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        _, disp = displacement()
        return upsample_cells(disp, k, shape), losses
