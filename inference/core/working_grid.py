"""The working grid: a crop of the fixed grid around the US sector, at about 1 mm.

Along array axis ``a`` a working voxel spans ``step[a]`` full voxels (``step = working spacing
/ full spacing``): working voxel ``w`` is centred on full voxel ``lo + step * w + (step - 1) / 2``
(per axis), hence ``working_vox2world = fixed_vox2world @ S`` with
``S = [[step_i, 0, 0, lo_i + (step_i - 1)/2], [0, step_j, 0, ...], [0, 0, step_k, ...], [0, 0, 0, 1]]``.

Integer steps (0.5 or 1 mm input for a 1 mm working grid) average blocks of full voxels;
other steps (0.3 or 2 mm input, anisotropic voxels) resample: a Gaussian anti-aliasing filter
where the working grid is coarser, then trilinear interpolation at the working centres. Either
way every length in the settings means the same millimetres whatever the input spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage

MIN_WORKING_SIDE = 8  # working voxels per side at least (the convex stage pools by up to 4)
INTEGER_TOLERANCE = 0.02  # a step within 2 % of an integer is taken as that integer (block averaging)


@dataclass(frozen=True)
class WorkingGrid:
    """A crop of the full fixed grid, ``factor`` full voxels per working voxel along each axis."""

    lo: tuple[int, int, int]  # first full voxel of the crop
    factor: float | tuple[float, float, float]  # full voxels per working voxel (one, or per axis)
    shape: tuple[int, int, int]  # working grid shape
    full_shape: tuple[int, int, int]

    @property
    def steps(self) -> tuple[float, float, float]:
        """``factor`` per axis."""
        f = self.factor
        return (float(f),) * 3 if np.isscalar(f) else tuple(float(v) for v in f)  # type: ignore[return-value,arg-type]

    @property
    def integer(self) -> bool:
        """True when every step is an integer: the working grid averages blocks of full voxels."""
        return all(float(s).is_integer() and s >= 1 for s in self.steps)

    @property
    def hi(self) -> tuple[int, int, int]:
        """One past the last full voxel the crop covers (block-averaging grids)."""
        return tuple(
            lo + int(np.ceil(s * n)) for lo, s, n in zip(self.lo, self.steps, self.shape, strict=True)
        )  # type: ignore[return-value]

    def crop(self, array: NDArray) -> NDArray:
        """The crop of a full-grid array, zero-padded where the crop leaves the grid."""
        out = np.zeros(tuple(h - lo for lo, h in zip(self.lo, self.hi, strict=True)), dtype=np.float32)
        src = tuple(
            slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(self.lo, self.hi, self.full_shape, strict=True)
        )
        dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, self.lo, strict=True))
        out[dst] = array[src]
        return out

    def centres(self) -> list[NDArray[np.float64]]:
        """Full-voxel coordinate of the working centres along each axis: ``lo + step * w + (step - 1) / 2``."""
        return [
            lo + s * np.arange(n) + (s - 1) / 2.0
            for lo, s, n in zip(self.lo, self.steps, self.shape, strict=True)
        ]

    def vox2world(self, fixed_vox2world: NDArray) -> NDArray[np.float64]:
        """Working voxel -> world (see the module docstring)."""
        full = np.eye(4)
        full[:3, :3] = np.diag(self.steps)
        full[:3, 3] = [lo + (s - 1) / 2.0 for lo, s in zip(self.lo, self.steps, strict=True)]
        return np.asarray(fixed_vox2world, dtype=np.float64) @ full

    def to_working(self, array: NDArray, device: torch.device | str) -> torch.Tensor:
        """``(1, 1, *shape)`` tensor of a full-grid array on the working grid (zero outside the grid)."""
        if self.integer:
            kernel = tuple(int(s) for s in self.steps)
            t = torch.from_numpy(self.crop(array))[None, None].to(device)
            return F.avg_pool3d(t, kernel) if max(kernel) > 1 else t
        return torch.from_numpy(self._resample(array))[None, None].to(device)

    def _resample(self, array: NDArray) -> NDArray[np.float32]:
        """Anti-aliased trilinear samples of ``array`` at the working centres."""
        a = np.asarray(array, dtype=np.float32)
        # A box of `step` voxels has the variance of a Gaussian of sd sqrt((step^2 - 1) / 12).
        sigmas = [np.sqrt((s * s - 1) / 12.0) if s > 1 else 0.0 for s in self.steps]
        if any(sigmas):
            a = ndimage.gaussian_filter(a, sigmas, mode="nearest")
        coords = np.meshgrid(*self.centres(), indexing="ij")
        return ndimage.map_coordinates(a, coords, order=1, mode="constant", cval=0.0).astype(np.float32)


def working_steps(spacing_mm: NDArray, working_spacing_mm: float) -> tuple[float, float, float]:
    """Full voxels per working voxel along each axis; within 2 % of an integer >= 1, that integer."""
    out = []
    for s in np.asarray(spacing_mm, dtype=float):
        r = working_spacing_mm / s
        out.append(float(round(r)) if round(r) >= 1 and abs(r - round(r)) <= INTEGER_TOLERANCE * r else r)
    return tuple(out)  # type: ignore[return-value]


def working_grid(
    mask: NDArray[np.bool_], spacing_mm: NDArray | float, working_spacing_mm: float, crop_margin_mm: float
) -> WorkingGrid:
    """Crop box around the sector ``mask`` (plus ``crop_margin_mm``) on a grid of ``working_spacing_mm``."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    steps = working_steps(spacing, working_spacing_mm)
    margin = np.round(crop_margin_mm / spacing).astype(int)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    shape = np.maximum(np.ceil((hi - lo) / np.array(steps) - 1e-9).astype(int), MIN_WORKING_SIDE)
    factor = steps[0] if len(set(steps)) == 1 else steps
    return WorkingGrid(tuple(int(v) for v in lo), factor, tuple(int(v) for v in shape), tuple(mask.shape))  # type: ignore[arg-type]
