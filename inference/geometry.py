"""Coordinate frames and grid operations (numpy only, no torch).

Vocabulary, used everywhere in this project:

* **voxel** coordinates ``(i, j, k)`` index the array axes in order: ``array[i, j, k]``.
  Voxel centres are at integer coordinates.
* **world** coordinates are millimetres in the NIfTI scanner frame (RAS+), as given by the
  image's ``vox2world`` matrix: ``world = vox2world @ [i, j, k, 1]``.
* A matrix named ``a2b`` maps homogeneous points of frame ``a`` to frame ``b``:
  ``p_b = a2b @ p_a``. Compositions read right to left:
  ``fixed_vox2moving_vox = inv(moving_vox2world) @ fixed2moving_world @ fixed_vox2world``.
* A **displacement field** in the challenge format has shape ``(I, J, K, 3)``; ``u[i, j, k]``
  is in voxels of the fixed grid along the array axes, and maps fixed to moving:
  the warped moving image is ``moving(x + u(x))`` for every fixed voxel ``x``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage


def apply_affine(a2b: ArrayLike, points: ArrayLike) -> NDArray[np.float64]:
    """Map points ``(N, 3)`` of frame a to frame b: ``p_b = a2b[:3, :3] @ p_a + a2b[:3, 3]``."""
    matrix = np.asarray(a2b, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def affine_problem(matrix: NDArray[np.float64]) -> str | None:
    """Why ``matrix`` is not a finite, invertible 4x4 affine (a phrase to follow its name), or None."""
    if matrix.shape != (4, 4):
        return f"must be a 4x4 matrix, got shape {matrix.shape}"
    if not np.isfinite(matrix).all():
        return "has non-finite entries"
    if not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)):
        return f"is not affine: last row {matrix[3].tolist()}, expected [0, 0, 0, 1]"
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        return "is singular"
    return None


def voxel_spacing(vox2world: ArrayLike) -> NDArray[np.float64]:
    """Voxel size in mm along each array axis: the norms of the columns of ``vox2world[:3, :3]``."""
    return np.linalg.norm(np.asarray(vox2world, dtype=np.float64)[:3, :3], axis=0)


def same_grid(
    shape_a: tuple[int, ...],
    vox2world_a: ArrayLike,
    shape_b: tuple[int, ...],
    vox2world_b: ArrayLike,
    atol_mm: float = 1e-3,
) -> bool:
    """True when both grids have the same shape and voxel centres within ``atol_mm``."""
    if tuple(shape_a[:3]) != tuple(shape_b[:3]):
        return False
    a = np.asarray(vox2world_a, dtype=np.float64)
    b = np.asarray(vox2world_b, dtype=np.float64)
    # Compare the positions of the 8 grid corners: this bounds the error of every voxel centre.
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape_a[:3]], indexing="ij"))
    corners = corners.reshape(3, -1).T
    return bool(np.abs(apply_affine(a, corners) - apply_affine(b, corners)).max() <= atol_mm)


def resample_to_grid(
    moving: NDArray,
    moving_vox2world: ArrayLike,
    fixed_shape: tuple[int, int, int],
    fixed_vox2world: ArrayLike,
    order: int = 1,
    cval: float = 0.0,
    fixed2moving_world: ArrayLike | None = None,
) -> NDArray[np.float32]:
    """Resample ``moving`` onto the fixed grid through world coordinates.

    ``out[x] = moving(fixed_vox2moving_vox @ x)`` with
    ``fixed_vox2moving_vox = inv(moving_vox2world) @ fixed2moving_world @ fixed_vox2world``;
    ``fixed2moving_world`` defaults to the identity (the images' own alignment).
    """
    f2m = np.eye(4) if fixed2moving_world is None else np.asarray(fixed2moving_world, dtype=np.float64)
    fixed_vox2moving_vox = (
        np.linalg.inv(np.asarray(moving_vox2world, dtype=np.float64))
        @ f2m
        @ np.asarray(fixed_vox2world, dtype=np.float64)
    )
    out = ndimage.affine_transform(
        np.asarray(moving, dtype=np.float32),
        fixed_vox2moving_vox[:3, :3],
        offset=fixed_vox2moving_vox[:3, 3],
        output_shape=tuple(fixed_shape),
        order=order,
        mode="constant",
        cval=cval,
    )
    return out.astype(np.float32, copy=False)


def affine_displacement(
    fixed2moving_world: ArrayLike,
    fixed_vox2world: ArrayLike,
    shape: tuple[int, int, int],
    moving_vox2world: ArrayLike | None = None,
) -> NDArray[np.float32]:
    """Challenge-format displacement of a world-space affine transform.

    For a fixed voxel ``x``: ``y = fixed_vox2moving_vox @ x`` with
    ``fixed_vox2moving_vox = inv(moving_vox2world) @ fixed2moving_world @ fixed_vox2world``,
    and ``u(x) = y - x`` (voxels, array axes, shape ``(I, J, K, 3)``). The moving grid defaults
    to the fixed grid, as in ReMIND2Reg.
    """
    fixed_vox2world = np.asarray(fixed_vox2world, dtype=np.float64)
    moving_vox2world = fixed_vox2world if moving_vox2world is None else moving_vox2world
    fixed_vox2moving_vox = (
        np.linalg.inv(np.asarray(moving_vox2world, dtype=np.float64))
        @ np.asarray(fixed2moving_world, dtype=np.float64)
        @ fixed_vox2world
    )
    # u(x) = (A - I) x + t, evaluated axis by axis to keep memory at one (I, J, K, 3) array.
    linear = fixed_vox2moving_vox[:3, :3] - np.eye(3)
    disp = np.empty((*shape, 3), dtype=np.float32)
    i, j, k = (np.arange(n, dtype=np.float64) for n in shape)
    for c in range(3):
        disp[..., c] = (
            linear[c, 0] * i[:, None, None]
            + linear[c, 1] * j[None, :, None]
            + linear[c, 2] * k[None, None, :]
            + fixed_vox2moving_vox[c, 3]
        )
    return disp


def compose_affine_displacement(
    disp_vox: NDArray, fixed2moving_world: ArrayLike, fixed_vox2world: ArrayLike
) -> NDArray[np.float32]:
    """Challenge-format field of "the field ``disp_vox`` first, then the affine".

    With ``A = inv(F) @ fixed2moving_world @ F`` (``F = fixed_vox2world``; the moving image on
    the fixed grid, as in ReMIND2Reg): ``x + u(x) = A (x + disp_vox(x))``, hence
    ``u(x) = (A x - x) + A_lin @ disp_vox(x)``. This is the pipeline's affine stage
    followed by a deformable stage that ran on the moving image pre-warped by the affine:
    ``warped(x) = prewarped(x + d(x)) = moving(A (x + d(x)))``. ``disp_vox`` is
    ``(I, J, K, 3)`` in fixed voxels; the result has the same shape, float32.
    """
    disp_vox = np.asarray(disp_vox, dtype=np.float32)
    fixed_vox2world = np.asarray(fixed_vox2world, dtype=np.float64)
    vox2vox = (
        np.linalg.inv(fixed_vox2world) @ np.asarray(fixed2moving_world, dtype=np.float64) @ fixed_vox2world
    )
    out = affine_displacement(fixed2moving_world, fixed_vox2world, disp_vox.shape[:3])
    linear = vox2vox[:3, :3].astype(np.float32)
    for c in range(3):
        out[..., c] += (
            disp_vox[..., 0] * linear[c, 0]
            + disp_vox[..., 1] * linear[c, 1]
            + disp_vox[..., 2] * linear[c, 2]
        )
    return out
