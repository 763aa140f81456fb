"""Displacement fields as torch tensors: sampling, warping, composition, integration, smoothing.

A field ``u`` is ``(N, 3, I, J, K)``; ``u[:, c]`` is the displacement along array axis ``c``
in voxels of the grid it lives on. The warp convention is the challenge's:
``warped(x) = moving(x + u(x))``.

``torch.nn.functional.grid_sample`` wants normalised coordinates in ``[-1, 1]`` with the
LAST component indexing the LAST tensor axis (``(k, j, i)`` order for an ``(I, J, K)``
volume). :func:`voxel_to_grid` is the only place that converts; everything else uses voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CACHE: dict[tuple, torch.Tensor] = {}
_CACHE_LIMIT = 16


def _cached(key: tuple, make) -> torch.Tensor:
    """Small cache of coordinate grids (rebuilding them dominated the Adam loop)."""
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def identity_voxels(shape: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, I, J, K)``: channel c holds the index along axis c.

    The returned tensor is shared (cached): do not modify it in place.
    """

    def make() -> torch.Tensor:
        axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)[None]

    return _cached(("voxels", tuple(shape), str(device), dtype), make)


def _identity_grid(shape: tuple[int, int, int], device, dtype) -> torch.Tensor:
    """The identity in grid_sample layout ``(1, I, J, K, 3)``, normalised, (k, j, i) order."""
    return _cached(
        ("grid", tuple(shape), str(device), dtype),
        lambda: voxel_to_grid(identity_voxels(shape, device, dtype), shape),
    )


def voxel_to_grid(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Voxel coordinates ``(N, 3, ...)`` in (i, j, k) order -> grid_sample grid ``(N, ..., 3)``.

    ``align_corners=True`` convention: voxel 0 -> -1, voxel n-1 -> +1. The channel order is
    reversed to (k, j, i) because grid_sample's last component indexes the last tensor axis.
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=coords.device, dtype=coords.dtype)
    norm = coords * scale.view(1, 3, *([1] * (coords.dim() - 2))) - 1.0
    return norm.movedim(1, -1).flip(-1)


def sample(
    volume: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding: str = "border"
) -> torch.Tensor:
    """``volume`` ``(N, C, I, J, K)`` at voxel coordinates ``coords`` ``(N, 3, I', J', K')``."""
    grid = voxel_to_grid(coords, tuple(volume.shape[-3:]))
    return F.grid_sample(volume, grid.to(volume.dtype), mode=mode, padding_mode=padding, align_corners=True)


def warp(moving: torch.Tensor, disp: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """``moving(x + u(x))`` on the grid of ``disp`` (same grid as ``moving``)."""
    shape = tuple(disp.shape[-3:])
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=disp.device, dtype=disp.dtype)
    # Displacement in normalised units, channels last and reversed to (k, j, i) like the grid.
    offset = (disp * scale.view(1, 3, 1, 1, 1)).movedim(1, -1).flip(-1)
    grid = _identity_grid(shape, disp.device, disp.dtype) + offset
    return F.grid_sample(
        moving, grid.to(moving.dtype), mode="bilinear", padding_mode=padding, align_corners=True
    )


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Field of ``x -> x + first(x) + second(x + first(x))``: apply ``first``, then ``second``.

    With the fixed->moving convention, if ``first`` maps fixed to an intermediate frame and
    ``second`` maps that frame on to moving, the result maps fixed to moving.
    """
    return first + warp(second, first)


def resize_field(disp: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a field to ``shape`` with corners aligned, vectors rescaled.

    Coarse voxel ``c`` sits at fine voxel ``c * (n_fine - 1) / (n_coarse - 1)``; component
    ``a`` is multiplied by that same factor along axis ``a``.
    """
    old = disp.shape[-3:]
    out = F.interpolate(disp, size=shape, mode="trilinear", align_corners=True)
    factors = torch.tensor(
        [(n - 1) / max(o - 1, 1) for n, o in zip(shape, old, strict=True)],
        device=disp.device,
        dtype=disp.dtype,
    )
    return out * factors.view(1, 3, 1, 1, 1)


def box_smooth(disp: torch.Tensor, passes: int = 1, size: int = 3) -> torch.Tensor:
    """``passes`` box filters of side ``size`` (replicate padding), channel by channel."""
    pad = size // 2
    for _ in range(passes):
        disp = F.avg_pool3d(F.pad(disp, (pad,) * 6, mode="replicate"), size, stride=1)
    return disp


def scaling_and_squaring(velocity: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Displacement of ``exp(v)`` for a stationary velocity field (voxels): fold-free maps."""
    disp = velocity / (2**steps)
    for _ in range(steps):
        disp = compose(disp, disp)
    return disp


def upsample_cells(coarse: torch.Tensor, grid_sp: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """Upsample a field defined on pooled cells to the fine grid, vectors rescaled.

    Cell ``c`` of an ``avg_pool3d(grid_sp)`` grid is centred on fine voxel
    ``c * grid_sp + (grid_sp - 1) / 2``; fine voxel ``x`` therefore reads the coarse field at
    ``(x - (grid_sp - 1) / 2) / grid_sp`` (trilinear, border-extended), times ``grid_sp``.
    """
    fine = identity_voxels(shape, coarse.device, coarse.dtype)
    return sample(coarse, (fine - (grid_sp - 1) / 2.0) / grid_sp) * grid_sp


def pool_cells(fine: torch.Tensor, grid_sp: int) -> torch.Tensor:
    """Average a fine field onto ``avg_pool3d(grid_sp)`` cells, vectors in coarse voxels."""
    return F.avg_pool3d(fine, grid_sp, stride=grid_sp, ceil_mode=True) / grid_sp


def affine_after_field(vox2vox, disp: torch.Tensor) -> torch.Tensor:
    """Field of "``disp`` first, then the affine": ``x + u(x) = A (x + disp(x))``.

    ``vox2vox`` (4x4, array-like) maps voxels of ``disp``'s grid to voxels of the same grid
    (e.g. ``inv(W) @ fixed2moving_world @ W``). ``u(x) = (A_lin - I) x + t + A_lin disp(x)``
    is evaluated exactly (no interpolation). The torch twin of
    :func:`remind2reg.inference.geometry.compose_affine_displacement`, for ``(1, 3, I, J, K)`` fields.
    """
    shape = tuple(disp.shape[-3:])
    a = torch.as_tensor(vox2vox, dtype=torch.float32, device=disp.device)
    x = identity_voxels(shape, disp.device)[0].reshape(3, -1)  # (3, P), rows (i, j, k)
    moved = a[:3, :3] @ (x + disp[0].reshape(3, -1).float()) + a[:3, 3:4]
    return (moved - x).reshape(1, 3, *shape)


def affine_field(vox2vox, shape: tuple[int, int, int], device=None) -> torch.Tensor:
    """Displacement ``(1, 3, I, J, K)`` of ``x -> vox2vox @ x``: ``u(x) = A x + t - x``."""
    return affine_after_field(vox2vox, torch.zeros((1, 3, *shape), device=device))


def integrate(velocity: torch.Tensor, shape: tuple[int, int, int], steps: int) -> torch.Tensor:
    """``exp(velocity)`` by scaling and squaring on the velocity's grid, resized to ``shape``.

    ``velocity`` ``(N, 3, ...)`` is in voxels of its own grid; the result is in voxels of
    ``shape`` (vectors rescaled once, by :func:`resize_field`). Used by the refinement network
    and by the trainer's random deformations.
    """
    return resize_field(scaling_and_squaring(velocity, steps), shape)


def jacobian_det(disp: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` ``(N, D-2, H-2, W-2)`` by central differences (interior voxels).

    The torch twin of :func:`remind2reg.evaluation.metrics.jacobian_determinant` (same
    ``[-0.5, 0, 0.5]`` stencil; that one is numpy float64 on one ``(I, J, K, 3)`` field and
    crops 2 voxels per side), for checking a field on its device without a float64 host copy.
    """
    grads = torch.gradient(disp, dim=(2, 3, 4))  # grads[a][:, c] = d u_c / d x_a, central inside
    jac = torch.stack(grads, 2)[..., 1:-1, 1:-1, 1:-1]  # (N, 3 components, 3 axes, ...)
    jac = jac + torch.eye(3, dtype=disp.dtype, device=disp.device).view(1, 3, 3, 1, 1, 1)
    # det over the last two axes: move (components, axes) to the end of the shape.
    return torch.linalg.det(jac.movedim((1, 2), (-2, -1)))
