"""Stage 7, embedding: the working-grid result as challenge-format fields on the full grid."""

from __future__ import annotations

import numpy as np
import torch
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
    ``step[a]`` (working voxels -> full voxels). Computed in slabs along the first axis to
    bound memory.
    """
    full = grid.full_shape
    out = np.empty((*full, 3), dtype=np.float32)
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
