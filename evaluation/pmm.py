"""Patch-wise mutual-information map (PMM): where are two images aligned, without landmarks.

For every cubic patch of ``patch`` voxels per side, placed every ``stride`` voxels, whose
voxels lie at least ``min_fraction`` inside the mask (the US sector), the normalised mutual
information of the fixed and the moving image is computed from their joint histogram over the
patch's mask voxels. Each patch gives its value to its mask voxels; where patches overlap the
values are averaged. The mean of the map inside the mask is a landmark-free score: compare it
before and after registration (REFERENCE.md, "Patch-wise MI map").

Normalisation: ``NMI = 2 MI / (H(F) + H(M))`` (the symmetric uncertainty), in ``[0, 1]``:
1 when one image determines the other (identical images), about 0 for independent ones (a
small positive bias remains, from finite patches). A patch where both images are constant
has no information and scores 0. This is not the ``(H(F) + H(M)) / H(F, M)`` of
:mod:`remind2reg.inference.core.losses`, which lies in ``[1, 2]``.

Computation (vectorised, exact): with ``patch`` a multiple of ``stride``, the volume is cut
into cells of ``stride^3`` voxels; every patch is a block of ``(patch / stride)^3`` cells, and
every voxel of a cell is covered by the same patches. So one ``bincount`` gives the joint
histogram of every cell, box sums over cells give the histogram of every patch, and box sums
over patches spread the values back to the cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class PatchMIMap:
    """A PMM: ``map`` on the input grid (NaN outside the mask or where no patch is valid)."""

    map: NDArray[np.float32]
    mean: float  # voxel-weighted mean of ``map`` over the covered mask voxels (NaN if none)
    patches: int  # number of valid patches


def quantise(image: NDArray, mask: NDArray[np.bool_], bins: int) -> NDArray[np.int64]:
    """Bin indices ``0 .. bins-1`` of ``image``, equal-width between its 1st and 99th
    percentile inside ``mask`` (clipped outside that range)."""
    values = image[mask]
    if values.size == 0:
        return np.zeros(image.shape, dtype=np.int64)
    lo, hi = np.percentile(values, [1.0, 99.0])
    scale = (bins - 1) / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((image - lo) * scale), 0, bins - 1).astype(np.int64)


def _box_sum(array: NDArray, size: int, axes: tuple[int, ...] = (0, 1, 2)) -> NDArray:
    """Sums over every window of ``size`` along ``axes`` ("valid" mode: each axis shrinks by size-1)."""
    out = array
    for axis in axes:
        c = np.cumsum(out, axis=axis)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = c.shape[axis]
        out = np.take(c, np.arange(size, n), axis=axis) - np.take(c, np.arange(0, n - size), axis=axis)
    return out


def _entropy(p: NDArray, axis: tuple[int, ...] | int) -> NDArray:
    """Shannon entropy (nats) of probability tables along ``axis``; ``0 log 0 = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=axis)


def patch_nmi_from_histograms(joint: NDArray, bins: int) -> NDArray[np.float64]:
    """``2 MI / (H(F) + H(M))`` of joint histograms ``(..., bins * bins)`` (fixed bin major)."""
    counts = joint.reshape(*joint.shape[:-1], bins, bins).astype(np.float64)
    total = counts.sum(axis=(-2, -1), keepdims=True)
    p = counts / np.maximum(total, 1.0)
    h_f = _entropy(p.sum(axis=-1), -1)
    h_m = _entropy(p.sum(axis=-2), -1)
    h_fm = _entropy(p, (-2, -1))
    marginal = h_f + h_m
    with np.errstate(divide="ignore", invalid="ignore"):
        nmi = np.where(marginal > 1e-12, 2.0 * (marginal - h_fm) / marginal, 0.0)
    return np.clip(nmi, 0.0, 1.0)


def patchwise_nmi(
    fixed: NDArray,
    moving: NDArray,
    mask: NDArray | None = None,
    patch: int = 16,
    stride: int = 4,
    bins: int = 16,
    min_fraction: float = 0.5,
) -> PatchMIMap:
    """The patch-wise NMI map of two 3D images on one grid (see the module docstring).

    ``mask`` (default: everything) selects the voxels that count; a patch is used when at
    least ``min_fraction`` of its voxels are inside the mask. Intensities are quantised into
    ``bins`` levels per image over the whole mask (:func:`quantise`), so patch values compare
    across the volume.
    """
    fixed, moving = np.asarray(fixed), np.asarray(moving)
    mask = np.ones(fixed.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if fixed.ndim != 3 or fixed.shape != moving.shape or fixed.shape != mask.shape:
        raise ValueError(f"3D arrays of one shape expected; got {fixed.shape}, {moving.shape}, {mask.shape}")
    if stride < 1 or patch < stride or patch % stride:
        raise ValueError(f"patch ({patch}) must be a positive multiple of stride ({stride})")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, not {bins}")
    shape = fixed.shape
    cells = tuple(-(-n // stride) for n in shape)  # cells per axis, the volume padded up
    padded = tuple(c * stride for c in cells)
    pad = [(0, p - n) for p, n in zip(padded, shape, strict=True)]
    nb = bins * bins
    joint = quantise(fixed, mask, bins) * bins + quantise(moving, mask, bins)
    joint = np.pad(np.where(mask, joint, nb), pad, constant_values=nb)  # bin nb: outside the mask

    # Joint histogram of every cell: (cells..., nb + 1), last bin dropped (outside the mask).
    cell_of_voxel = np.arange(np.prod(cells)).reshape(cells)
    cell_of_voxel = np.repeat(np.repeat(np.repeat(cell_of_voxel, stride, 0), stride, 1), stride, 2)
    hist = np.bincount((cell_of_voxel * (nb + 1) + joint).ravel(), minlength=int(np.prod(cells)) * (nb + 1))
    cell_hist = hist.reshape(*cells, nb + 1)[..., :nb]

    k = patch // stride
    if any(c < k for c in cells):
        empty = np.full(shape, np.nan, dtype=np.float32)
        return PatchMIMap(map=empty, mean=float("nan"), patches=0)
    patch_hist = _box_sum(cell_hist, k)  # (patches..., nb)
    inside = patch_hist.sum(axis=-1)
    valid = inside >= min_fraction * patch**3
    values = np.where(valid, patch_nmi_from_histograms(patch_hist, bins), 0.0)

    # Spread back: cell c is covered by patches c-k+1 .. c on each axis.
    full = [(k - 1, k - 1)] * 3
    value_sum = _box_sum(np.pad(values, full), k)
    count = _box_sum(np.pad(valid.astype(np.float64), full), k)
    with np.errstate(divide="ignore", invalid="ignore"):
        cell_map = np.where(count > 0, value_sum / np.maximum(count, 1), np.nan)
    voxel_map = np.repeat(np.repeat(np.repeat(cell_map, stride, 0), stride, 1), stride, 2)
    voxel_map = voxel_map[: shape[0], : shape[1], : shape[2]]
    voxel_map = np.where(mask, voxel_map, np.nan).astype(np.float32)
    covered = voxel_map[np.isfinite(voxel_map)]
    mean = float(covered.mean()) if covered.size else float("nan")
    return PatchMIMap(map=voxel_map, mean=mean, patches=int(valid.sum()))
