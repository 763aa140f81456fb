"""Registration metrics, computed exactly as the ReMIND2Reg / Learn2Reg evaluation does.

Official source: ``evaluation/utils.py`` of ``ReubenDo/ReMIND2Reg`` (identical in
``MDL-UzL/L2R``). Conventions: a displacement field ``disp`` has shape ``(I, J, K, 3)`` in
fixed-grid voxels, fixed -> moving; landmarks are ``(N, 3)`` voxel indices.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage


def sample_displacement(disp: NDArray, points_vox: NDArray, order: int = 3) -> NDArray[np.float64]:
    """``u`` at voxel points ``(N, 3)``; cubic spline with zero padding by default, as official."""
    coords = np.asarray(points_vox, dtype=np.float64).T  # (3, N): one row per array axis
    return np.stack(
        [
            ndimage.map_coordinates(np.asarray(disp[..., c], dtype=np.float64), coords, order=order)
            for c in range(3)
        ],
        axis=1,
    )


def target_registration_error(
    fixed_landmarks: NDArray, moving_landmarks: NDArray, disp: NDArray, moving_spacing: ArrayLike
) -> NDArray[np.float64]:
    """Per-landmark TRE in mm, as the challenge computes it.

    ``u`` is sampled at the fixed landmarks with cubic ``map_coordinates``;
    ``TRE_n = || (fix_n + u(fix_n) - mov_n) * moving_spacing ||``. The fixed spacing is not
    used (the official function takes it but ignores it).
    """
    fix = np.asarray(fixed_landmarks, dtype=np.float64)
    mov = np.asarray(moving_landmarks, dtype=np.float64)
    if fix.shape != mov.shape or fix.ndim != 2 or fix.shape[1] != 3:
        raise ValueError(f"landmark arrays must both be (N, 3); got {fix.shape} and {mov.shape}")
    warped = fix + sample_displacement(disp, fix)
    return np.linalg.norm((warped - mov) * np.asarray(moving_spacing, dtype=np.float64), axis=1)


def jacobian_determinant(disp: NDArray) -> NDArray[np.float64]:
    """det(I + grad u) with central differences and zero padding, cropped by 2 voxels per side.

    Same stencil as the official ``jacobian_determinant``: ``[-0.5, 0, 0.5]`` correlated along
    each array axis with ``mode='constant'``. Returns shape ``(I-4, J-4, K-4)``.
    """
    u = np.asarray(disp, dtype=np.float64)
    stencil = np.array([-0.5, 0.0, 0.5])
    # jac[a][c] = d u_c / d x_a + delta_ac; det(J) = det(J^T), so the index order is immaterial.
    jac = [[None] * 3 for _ in range(3)]
    for a in range(3):
        for c in range(3):
            d = ndimage.correlate1d(u[..., c], stencil, axis=a, mode="constant", cval=0.0)
            d = d[2:-2, 2:-2, 2:-2]
            if a == c:
                d = d + 1.0
            jac[a][c] = d
    return (
        jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
        - jac[1][0] * (jac[0][1] * jac[2][2] - jac[0][2] * jac[2][1])
        + jac[2][0] * (jac[0][1] * jac[1][2] - jac[0][2] * jac[1][1])
    )


def sdlogj(jac_det: NDArray, mask: NDArray | None = None) -> float:
    """Standard deviation of the log Jacobian determinant, L2R definition.

    The official code computes ``std(log(clip(detJ + 3, 1e-9, 1e9)))``: note the ``+ 3``,
    kept here so that our numbers match the leaderboard's. ``mask`` (cropped like ``jac_det``)
    restricts the voxels, as the official masked evaluation does.
    """
    log_j = np.log(np.clip(jac_det + 3.0, 1e-9, 1e9))
    if mask is not None:
        log_j = log_j[np.asarray(mask, dtype=bool)]
    return float(log_j.std())


def folding_percent(jac_det: NDArray, mask: NDArray | None = None) -> float:
    """Percentage of voxels with ``det J <= 0`` (where the map folds).

    The official evaluator's ``num_foldings`` counts ``detJ + 3 <= 0`` instead, which almost
    never happens; this is the usual definition of folding.
    """
    values = jac_det if mask is None else jac_det[np.asarray(mask, dtype=bool)]
    return float(100.0 * np.count_nonzero(values <= 0) / max(values.size, 1))


def official_aggregates(values: ArrayLike) -> dict[str, float]:
    """Aggregates over cases as the official evaluator writes them: mean, std and ``30``.

    ``30`` is the 0.3 quantile of the per-case values (``np.quantile(values, .3)``): for TRE,
    the "TRE30" of the leaderboard.
    """
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "30": float(np.quantile(arr, 0.3))}
