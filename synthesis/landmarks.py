"""Choosing anatomical landmarks the way annotators do: distinctive 3D points.

Annotators of ReMIND/RESECT pick points visible in both MR and US: sulcal fundi, ventricle
horns, corners of the tumour or cavity boundary. We take the local maxima of the Förstner
corner measure ``det(S) / trace(S)`` of the structure tensor ``S`` of an anatomical image,
restricted to an allowed region, and keep the strongest ones at a minimum separation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


def forstner_score(
    image: NDArray, spacing_mm: float, derivative_mm: float = 1.0, window_mm: float = 2.0
) -> NDArray:
    """Förstner corner measure ``det(S) / (trace(S) + eps)`` of a 3D image (same shape)."""
    img = np.asarray(image, dtype=np.float32)
    sd, si = derivative_mm / spacing_mm, window_mm / spacing_mm
    grads = [ndimage.gaussian_filter(img, sd, order=tuple(int(a == b) for b in range(3))) for a in range(3)]
    s = {}
    for a in range(3):
        for b in range(a, 3):
            s[a, b] = ndimage.gaussian_filter(grads[a] * grads[b], si)
    det = (
        s[0, 0] * (s[1, 1] * s[2, 2] - s[1, 2] ** 2)
        - s[0, 1] * (s[0, 1] * s[2, 2] - s[1, 2] * s[0, 2])
        + s[0, 2] * (s[0, 1] * s[1, 2] - s[1, 1] * s[0, 2])
    )
    trace = s[0, 0] + s[1, 1] + s[2, 2]
    return det / (trace + 1e-6 * float(trace.max() + 1e-12))


def pick_landmarks(
    image: NDArray,
    allowed: NDArray[np.bool_],
    spacing_mm: float,
    n: int,
    rng: np.random.Generator,
    min_separation_mm: float = 8.0,
    salient_fraction: float = 0.15,
) -> NDArray[np.float64]:
    """Up to ``n`` landmark voxels ``(n, 3)`` at corner points of ``image`` inside ``allowed``.

    The image is clipped to its 2-98 % intensity range inside ``allowed`` so that one very
    bright structure (an enhancing tumour rim) does not take every landmark. Candidates are the
    allowed voxels in the top ``salient_fraction`` of :func:`forstner_score`; they are visited
    in random order (annotators differ in what they pick, and spread their points over the
    field of view) and kept unless closer than ``min_separation_mm`` to one already kept.
    """
    values = image[allowed]
    if values.size == 0:
        return np.zeros((0, 3))
    lo, hi = np.percentile(values, [2, 98])
    score = forstner_score(np.clip(image, lo, hi), spacing_mm)
    allowed_scores = score[allowed]
    threshold = np.quantile(allowed_scores, 1.0 - salient_fraction)
    idx = np.argwhere(allowed & (score >= threshold) & (score > 0))
    chosen = np.empty((0, 3))
    min_sep_vox = min_separation_mm / spacing_mm
    for i in rng.permutation(len(idx)):
        p = idx[i].astype(np.float64)
        if len(chosen) == 0 or np.min(np.linalg.norm(chosen - p, axis=1)) >= min_sep_vox:
            chosen = np.vstack([chosen, p])
            if len(chosen) == n:
                break
    return chosen
