"""Random smooth diffeomorphic deformations: Gaussian noise velocity on a coarse grid, upsampled
and integrated by scaling and squaring.

A field is ``(B, 3, D, H, W)`` in voxels of the grid it lives on, fixed -> moving
(``warped(x) = moving(x + u(x))``), as in :mod:`inference.deformable.fields`.
"""

from __future__ import annotations

import torch

from inference.deformable.fields import resize_field, scaling_and_squaring


def random_velocity(
    batch: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    max_std: float = 3.0,
    coarse_range: tuple[int, int] = (4, 10),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A smooth random SVF ``(B, 3, *shape)`` (voxels).

    Per sample: white noise of sd ``U(0, max_std)`` voxels on a coarse grid of
    ``U(coarse_range)`` nodes per side, upsampled trilinearly (corners aligned) to ``shape``.
    """
    out = []
    for _ in range(batch):
        n = int(torch.randint(coarse_range[0], coarse_range[1] + 1, (1,), generator=generator))
        std = float(torch.rand(1, generator=generator)) * max_std
        coarse = torch.randn((1, 3, n, n, n), generator=generator) * std
        out.append(torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True))
    return torch.cat(out, 0).to(device)


def random_deformation(
    batch: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    max_std: float = 3.0,
    coarse_range: tuple[int, int] = (4, 10),
    steps: int = 5,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Displacement ``exp(v)`` of :func:`random_velocity`, integrated at half resolution."""
    half = tuple(max(2, n // 2) for n in shape)
    v = random_velocity(batch, half, generator, max_std / 2, coarse_range, device)
    return resize_field(scaling_and_squaring(v, steps), shape)
