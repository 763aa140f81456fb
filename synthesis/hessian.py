"""Hessian eigen-analysis of 3D volumes: thin sheets and lines (ridges and valleys).

Used twice, in the same way: by the renderer to find the centre surfaces of sulci and the
falx in the (warped) T1, where the iUS shows thin bright lines, and by the realism statistics
to find bright ridges in real and simulated iUS and measure their width.

Conventions: arrays are indexed (i, j, k) with isotropic voxels; every length given in voxels
unless a name ends in ``_mm``. Second derivatives are of a Gaussian-smoothed volume (scale
``sigma`` voxels) and scale-normalised by ``sigma**2`` (Lindeberg), so responses at different
scales compare. Eigenvalues come in ascending order; ``eigvecs[:, :, m]`` belongs to
``eigvals[:, m]`` (numpy's ``eigh`` convention).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

# (a, b) index pairs of the 6 distinct Hessian entries, in the order they are stored.
PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def hessian(volume: NDArray, sigma: float) -> NDArray[np.float32]:
    """Scale-normalised Hessian ``sigma^2 * d2(G_sigma * volume)``: ``(6, *shape)`` float32
    in the order of :data:`PAIRS`."""
    vol = np.asarray(volume, dtype=np.float32)
    out = np.empty((6, *vol.shape), dtype=np.float32)
    for n, (a, b) in enumerate(PAIRS):
        order = [0, 0, 0]
        order[a] += 1
        order[b] += 1
        out[n] = ndimage.gaussian_filter(vol, sigma, order=tuple(order)) * np.float32(sigma**2)
    return out


def eigen_at(h6: NDArray, index: tuple[NDArray, ...]) -> tuple[NDArray, NDArray]:
    """Eigenvalues ``(N, 3)`` (ascending) and eigenvectors ``(N, 3, 3)`` of the Hessian at the
    voxels ``index`` (a tuple of 3 index arrays, as from ``np.nonzero``)."""
    h = h6[(slice(None), *index)]  # (6, N)
    mats = np.empty((h.shape[1], 3, 3), dtype=np.float32)
    for n, (a, b) in enumerate(PAIRS):
        mats[:, a, b] = h[n]
        mats[:, b, a] = h[n]
    vals, vecs = np.linalg.eigh(mats)
    return vals, vecs


def non_maximum(strength: NDArray, index: tuple[NDArray, ...], direction: NDArray) -> NDArray[np.bool_]:
    """True where ``strength`` at ``index`` is not below its two neighbours one voxel away
    along ``direction`` (``(N, 3)`` unit vectors, array axes): the centre of a sheet."""
    points = np.stack(index, axis=0).astype(np.float32)  # (3, N)
    centre = strength[index]
    keep = np.ones(len(centre), dtype=bool)
    for sign in (1.0, -1.0):
        nb = ndimage.map_coordinates(strength, points + sign * direction.T, order=1, mode="nearest")
        keep &= centre >= nb
    return keep


def ridge_centres(
    volume: NDArray,
    sigmas: tuple[float, ...],
    candidates: NDArray[np.bool_],
    bright: bool = True,
) -> tuple[tuple[NDArray, ...], NDArray, NDArray, NDArray]:
    """Centre voxels of thin sheets/lines over several scales.

    ``bright``: ridges (brighter than around: the most negative eigenvalue) or, if False,
    valleys (darker: the most positive eigenvalue). The strength is the best scale-normalised
    magnitude of that eigenvalue over ``sigmas``; only voxels of ``candidates`` are examined.
    Returns (index of the centre voxels, their strength, their unit normals (N, 3) across the
    sheet, the scale index that won per voxel).
    """
    best = np.zeros(volume.shape, dtype=np.float32)
    idx = np.nonzero(candidates)
    if len(idx[0]) == 0:
        empty = (np.zeros(0, dtype=np.intp),) * 3
        return empty, np.zeros(0, np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.intp)
    normal = np.zeros((len(idx[0]), 3), dtype=np.float32)
    scale = np.zeros(len(idx[0]), dtype=np.intp)
    for s, sigma in enumerate(sigmas):
        vals, vecs = eigen_at(hessian(volume, sigma), idx)
        m = 0 if bright else 2
        resp = np.maximum(-vals[:, 0], 0) if bright else np.maximum(vals[:, 2], 0)
        better = resp > best[idx]
        best[tuple(i[better] for i in idx)] = resp[better]
        normal[better] = vecs[better, :, m]
        scale[better] = s
    keep = non_maximum(best, idx, normal) & (best[idx] > 0)
    centres = tuple(i[keep] for i in idx)
    return centres, best[centres], normal[keep], scale[keep]


__all__ = ["PAIRS", "eigen_at", "hessian", "non_maximum", "ridge_centres"]
