"""Random label maps, as in SynthMorph: argmax over channels of smoothed noise, randomly warped.

Output: ``(B, D, H, W)`` int64 label maps with values in ``[0, n_labels)``, or their one-hot
``(B, n_labels, D, H, W)`` float32. Smoothing is done by drawing each channel's noise on a
coarse grid (``shape / scale``, ``scale`` random per sample) and upsampling it trilinearly,
which is a fast smooth-noise generator on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from remind2reg.inference.core.fields import warp
from remind2reg.training.deform import random_deformation, upsampled_noise


def smooth_noise(
    batch: int,
    channels: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    scale_range: tuple[float, float] = (4.0, 16.0),
) -> torch.Tensor:
    """``(B, C, *shape)`` noise smooth over ``U(scale_range)`` voxels (one scale per sample)."""
    out = []
    for _ in range(batch):
        scale = float(scale_range[0] + torch.rand(1, generator=generator) * (scale_range[1] - scale_range[0]))
        coarse = tuple(max(2, round(n / scale) + 1) for n in shape)
        out.append(upsampled_noise(coarse, shape, generator, channels))  # type: ignore[arg-type]
    return torch.cat(out, 0)


def random_label_maps(
    batch: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    n_labels: int = 16,
    scale_range: tuple[float, float] = (4.0, 16.0),
    warp_std: float = 6.0,
) -> torch.Tensor:
    """``(B, D, H, W)`` int64 maps: argmax of ``n_labels`` smooth noise channels, then warped by
    a random smooth deformation (velocity sd up to ``warp_std`` voxels); the argmax is taken
    after warping the channels (no nearest-neighbour label interpolation).
    """
    # The noise is smooth over >= 4 voxels: draw and warp it at half resolution (4x cheaper),
    # then upsample the channels trilinearly before the argmax (smooth boundaries).
    half = tuple(max(2, n // 2) for n in shape)
    noise = smooth_noise(batch, n_labels, half, generator, (scale_range[0] / 2, scale_range[1] / 2))
    if warp_std > 0:
        # A field of the half grid, in half-grid voxels: hence warp_std / 2.
        disp = random_deformation(batch, half, generator, max_std=warp_std / 2, coarse_range=(3, 6))
        noise = warp(noise, disp)
    return F.interpolate(noise, size=shape, mode="trilinear", align_corners=True).argmax(1)


def one_hot(labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """``(B, D, H, W)`` int64 -> ``(B, n_labels, D, H, W)`` float32."""
    return F.one_hot(labels, n_labels).permute(0, 4, 1, 2, 3).float()
