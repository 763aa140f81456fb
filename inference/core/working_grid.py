"""The working grid: a crop of the fixed grid around the US sector, averaged to about 1 mm.

Working voxel ``w`` is the block of ``factor^3`` full voxels starting at ``lo + factor * w``,
whose centre is full voxel ``lo + factor * w + (factor - 1) / 2``; hence
``working_vox2world = fixed_vox2world @ S`` with ``S = [[f, 0, 0, lo_i + (f-1)/2], ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

MIN_WORKING_SIDE = 8  # working voxels per side at least (the convex stage pools by up to 4)


@dataclass(frozen=True)
class WorkingGrid:
    """A crop of the full fixed grid, averaged by ``factor`` along each axis."""

    lo: tuple[int, int, int]  # first full voxel of the crop
    factor: int  # full voxels per working voxel
    shape: tuple[int, int, int]  # working grid shape
    full_shape: tuple[int, int, int]

    @property
    def hi(self) -> tuple[int, int, int]:
        return tuple(lo + self.factor * n for lo, n in zip(self.lo, self.shape, strict=True))  # type: ignore[return-value]

    def crop(self, array: NDArray) -> NDArray:
        """The crop of a full-grid array, zero-padded where the crop leaves the grid."""
        out = np.zeros(tuple(self.factor * n for n in self.shape), dtype=np.float32)
        src = tuple(
            slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(self.lo, self.hi, self.full_shape, strict=True)
        )
        dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, self.lo, strict=True))
        out[dst] = array[src]
        return out

    def vox2world(self, fixed_vox2world: NDArray) -> NDArray[np.float64]:
        """Working voxel -> world: working voxel ``w`` is centred on full voxel
        ``lo + factor * w + (factor - 1) / 2``."""
        full = np.eye(4)
        full[:3, :3] *= self.factor
        full[:3, 3] = np.asarray(self.lo) + (self.factor - 1) / 2.0
        return np.asarray(fixed_vox2world, dtype=np.float64) @ full

    def to_working(self, array: NDArray, device: torch.device | str) -> torch.Tensor:
        """``(1, 1, *shape)`` tensor: the crop averaged over factor^3 blocks."""
        t = torch.from_numpy(self.crop(array))[None, None].to(device)
        return F.avg_pool3d(t, self.factor) if self.factor > 1 else t


def working_grid(
    mask: NDArray[np.bool_], spacing_mm: float, working_spacing_mm: float, crop_margin_mm: float
) -> WorkingGrid:
    """Crop box around the sector ``mask`` (plus ``crop_margin_mm``) on a grid of about
    ``working_spacing_mm`` (``factor = round(working / spacing)`` full voxels, at least 1)."""
    factor = max(1, round(working_spacing_mm / spacing_mm))
    margin = round(crop_margin_mm / spacing_mm)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    shape = np.maximum(-(-(hi - lo) // factor), MIN_WORKING_SIDE)
    return WorkingGrid(tuple(int(v) for v in lo), factor, tuple(int(v) for v in shape), tuple(mask.shape))  # type: ignore[arg-type]
