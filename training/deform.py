"""Random smooth diffeomorphic deformations: Gaussian noise velocity on a coarse grid, upsampled
and integrated by scaling and squaring.

A field is ``(B, 3, D, H, W)``; channel ``c`` is the displacement along array axis ``c`` in
voxels of the grid it lives on, fixed -> moving (``warped(x) = moving(x + u(x))``), as in
:mod:`remind2reg.inference.core.fields`. No axis is permuted or flipped anywhere here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from remind2reg.inference.core.fields import integrate


def upsampled_noise(
    coarse: tuple[int, int, int],
    shape: tuple[int, int, int],
    generator: torch.Generator,
    channels: int = 1,
    std: float = 1.0,
) -> torch.Tensor:
    """``(1, channels, *shape)`` smooth noise: white noise of sd ``std`` on a ``coarse`` grid,
    upsampled trilinearly (corners aligned) to ``shape``. Drawn on the CPU from ``generator``.

    The shared generator of the training data (velocities, label noise, bias fields).
    """
    noise = torch.randn((1, channels, *coarse), generator=generator) * std
    return F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)


def random_velocity(
    batch: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    max_std: float = 3.0,
    coarse_range: tuple[int, int] = (4, 10),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A smooth random SVF ``(B, 3, *shape)`` in voxels of the ``shape`` grid.

    Per sample: white noise of sd ``U(0, max_std)`` voxels on a coarse grid of
    ``U(coarse_range)`` nodes per side, upsampled trilinearly (corners aligned) to ``shape``.
    The values are not rescaled by the upsampling: ``max_std`` is in ``shape``-grid voxels.
    """
    out = []
    for _ in range(batch):
        n = int(torch.randint(coarse_range[0], coarse_range[1] + 1, (1,), generator=generator))
        std = float(torch.rand(1, generator=generator)) * max_std
        out.append(upsampled_noise((n, n, n), shape, generator, channels=3, std=std))
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
    """Displacement ``exp(v)`` ``(B, 3, *shape)`` (voxels of ``shape``) of :func:`random_velocity`.

    The velocity is drawn and integrated on the half grid (``n // 2`` per side) with sd up to
    ``max_std / 2`` half-grid voxels; :func:`~remind2reg.inference.core.fields.integrate` then
    resizes it with :func:`~remind2reg.inference.core.fields.resize_field`, which multiplies the
    vectors once by ``(n - 1) / (n // 2 - 1)`` (about 2; corner-aligned grids), so the sd is
    about ``max_std`` voxels of ``shape``.
    """
    half = tuple(max(2, n // 2) for n in shape)
    v = random_velocity(batch, half, generator, max_std / 2, coarse_range, device)
    return integrate(v, shape, steps)  # type: ignore[arg-type]
