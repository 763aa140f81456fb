"""Point-set fits in one frame: rigid (Kabsch), affine (least squares), least trimmed squares.

Every fit returns a 4x4 matrix ``T`` with ``dst ~ T @ src`` for homogeneous points: apply it
with :func:`remind2reg.inference.geometry.apply_affine`. ``src`` and ``dst`` are ``(N, 3)``
corresponding points in the same units (world mm in this project).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.geometry import apply_affine
from remind2reg.inference.settings import TRANSFORMS


def _check_points(src: NDArray, dst: NDArray, minimum: int, kind: str) -> tuple[NDArray, NDArray]:
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"{kind} fit: src and dst must both be (N, 3), got {src.shape} and {dst.shape}")
    if len(src) < minimum:
        raise ValueError(f"{kind} fit needs at least {minimum} matches, got {len(src)}")
    return src, dst


def fit_rigid(src: NDArray, dst: NDArray) -> NDArray[np.float64]:
    """The rotation + translation ``T`` (4x4) minimising ``sum |T src - dst|^2`` (Kabsch).

    ``src``, ``dst``: ``(N, 3)`` corresponding points, N >= 3, not collinear. The rotation is
    proper (det +1): a reflection is never returned, even when it would fit better.
    """
    src, dst = _check_points(src, dst, 3, "rigid")
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    sign = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a proper rotation, no reflection
    rotation = vt.T @ np.diag([1.0, 1.0, sign]) @ u.T
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = cd - rotation @ cs
    return out


def fit_affine(src: NDArray, dst: NDArray) -> NDArray[np.float64]:
    """The affine ``T`` (4x4) minimising ``sum |T src - dst|^2`` (linear least squares), N >= 4."""
    src, dst = _check_points(src, dst, 4, "affine")
    design = np.hstack([src, np.ones((len(src), 1))])  # (N, 4)
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)  # (4, 3): dst = design @ solution
    out = np.eye(4)
    out[:3, :] = solution.T
    return out


def rigid_fit_residual(src: NDArray, dst: NDArray) -> float:
    """Mean distance ``|T src - dst|`` left after the best rigid fit :func:`fit_rigid`."""
    matrix = fit_rigid(src, dst)
    return float(np.linalg.norm(apply_affine(matrix, src) - np.asarray(dst, np.float64), axis=1).mean())


@dataclass
class LtsFit:
    matrix: NDArray[np.float64]  # dst ~ matrix @ src
    inliers: NDArray[np.bool_]
    rms_inliers: float


def lts_fit(
    src: NDArray, dst: NDArray, transform: str, inlier_fraction: float = 0.5, iterations: int = 20
) -> LtsFit:
    """Least-trimmed-squares fit of ``dst ~ T src`` (the concentration steps of FAST-LTS).

    Starting from all points, refit on the ``h = ceil(inlier_fraction * N)`` points with the
    smallest residuals until that set no longer changes. With fewer than ``N - h`` gross
    outliers the fit is that of the inliers alone (as long as the first all-point fit
    already ranks most inliers first, which holds for moderate outlier fractions).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    fit = fit_rigid if transform == "rigid" else fit_affine
    minimum = 3 if transform == "rigid" else 4
    src, dst = _check_points(src, dst, minimum, transform)
    n = len(src)
    h = max(minimum, math.ceil(inlier_fraction * n))
    keep = np.ones(n, dtype=bool)
    matrix = fit(src, dst)
    for _ in range(iterations):
        residual = np.linalg.norm(apply_affine(matrix, src) - dst, axis=1)
        new = np.zeros(n, dtype=bool)
        new[np.argsort(residual, kind="stable")[:h]] = True
        if np.array_equal(new, keep):
            break
        keep = new
        matrix = fit(src[keep], dst[keep])
    residual = np.linalg.norm(apply_affine(matrix, src[keep]) - dst[keep], axis=1)
    return LtsFit(matrix, keep, float(np.sqrt((residual**2).mean())))
