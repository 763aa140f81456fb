"""Stage 7, embedding: the working-grid result as challenge-format fields on the full grid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from remind2reg.inference.core.fields import identity_voxels, sample
from remind2reg.inference.core.working_grid import WorkingGrid
from remind2reg.inference.geometry import compose_affine_displacement
from remind2reg.inference.io.displacement import SharedField
from remind2reg.inference.stages.transforms import GroupTransform


def embed(disp: torch.Tensor, grid: WorkingGrid, chunk: int = 16) -> NDArray[np.float32]:
    """The full-grid challenge field ``(I, J, K, 3)`` (full voxels) of a working field.

    Full voxel ``x`` reads the working field at ``w = (x - lo - (step - 1) / 2) / step``
    (per axis; trilinear, border-extended beyond the crop), and component ``a`` is scaled by
    ``step[a]`` (working voxels -> full voxels). Integer steps (block-averaging grids, the
    ReMIND2Reg case) take :func:`embed_integer`; other steps are sampled in slabs along the first
    axis to bound memory.

    The array is in Fortran memory order (the first index varies fastest), the order of a
    NIfTI file's voxels, so that writing it is a plain copy instead of a 200 MB transposition.
    """
    if grid.integer:
        return embed_integer(disp, grid)
    return embed_sampled(disp, grid, chunk)


def embed_integer(disp: torch.Tensor, grid: WorkingGrid) -> NDArray[np.float32]:
    """:func:`embed` for integer steps, as one trilinear upsampling and a border extension.

    ``F.interpolate(scale_factor=step, align_corners=False)`` puts output ``o`` at input
    ``(o + 1/2) / step - 1/2 = (o - (step - 1) / 2) / step``: with ``o = x - lo`` that is the
    ``w`` of :func:`embed`, and it clamps ``w`` to the crop like the border extension. Outside
    the crop the nearest crop value repeats (``replicate`` padding); where the crop leaves the
    full grid it is cut. Agrees with :func:`embed_sampled` to float rounding.
    """
    steps = tuple(round(s) for s in grid.steps)
    up = F.interpolate(disp.float(), scale_factor=steps, mode="trilinear", align_corners=False)
    up = up * torch.tensor(steps, dtype=up.dtype, device=up.device).view(1, 3, 1, 1, 1)
    cut = []
    pads: list[tuple[int, int]] = []
    for lo, n, full in zip(grid.lo, up.shape[2:], grid.full_shape, strict=True):
        start, stop = max(0, -lo), min(n, full - lo)  # the part of the crop inside the full grid
        cut.append(slice(start, stop))
        pads.append((max(lo, 0), full - max(lo, 0) - (stop - start)))
    up = up[:, :, cut[0], cut[1], cut[2]]
    # F.pad lists the last axis first: (k before, k after, j before, j after, i before, i after)
    flat = [p for pair in reversed(pads) for p in pair]
    up = F.pad(up, flat, mode="replicate")
    # (3, I, J, K) -> C-contiguous (3, K, J, I), whose transpose is the (I, J, K, 3) field in
    # Fortran order; torch makes the copy with all its threads.
    return up[0].permute(0, 3, 2, 1).contiguous().cpu().numpy().T


def embed_sampled(disp: torch.Tensor, grid: WorkingGrid, chunk: int = 16) -> NDArray[np.float32]:
    """:func:`embed` for any steps: trilinear sampling at each full voxel, in slabs of ``chunk``."""
    full = grid.full_shape
    out = np.empty((*full, 3), dtype=np.float32, order="F")
    lo = torch.tensor(grid.lo, dtype=torch.float32, device=disp.device).view(1, 3, 1, 1, 1)
    steps = torch.tensor(grid.steps, dtype=torch.float32, device=disp.device).view(1, 3, 1, 1, 1)
    offset = (steps - 1) / 2.0
    for start in range(0, full[0], chunk):
        stop = min(start + chunk, full[0])
        coords = identity_voxels((stop - start, full[1], full[2]), disp.device).clone()
        coords[:, 0] += start
        w = (coords - lo - offset) / steps
        values = sample(disp.float(), w) * steps  # (1, 3, slab, J, K)
        out[start:stop] = values[0].permute(1, 2, 3, 0).cpu().numpy()  # channels last: (slab, J, K, 3)
    return out


@torch.no_grad()
def embed_transforms(
    transforms: tuple[GroupTransform, ...], grid: WorkingGrid, fixed_vox2world: NDArray
) -> tuple[SharedField, ...]:
    """One full-grid field per group: the field embedded, then composed with the group's
    global transform, ``x + u(x) = A (x + d(x))``
    (:func:`~remind2reg.inference.geometry.compose_affine_displacement`)."""
    out = []
    for t in transforms:
        full = embed(t.disp, grid)
        if t.alignment.fixed2moving_world is not None:
            full = compose_affine_displacement(full, t.alignment.fixed2moving_world, fixed_vox2world)
        out.append(SharedField(t.modalities, full))
    return tuple(out)
