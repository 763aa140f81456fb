"""The patch-wise NMI map: exact against a per-patch loop, and sensible on known image pairs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from remind2reg.evaluation.pmm import patch_nmi_from_histograms, patchwise_nmi, quantise

SHAPE = (26, 22, 19)  # not multiples of the stride: padding is exercised


def _texture(seed: int, shape=SHAPE, sigma: float = 1.5) -> np.ndarray:
    """Smooth random texture: structure at the scale of a few voxels."""
    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)


def _sector(shape=SHAPE) -> np.ndarray:
    """A ball-shaped mask that leaves part of the volume out."""
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    return ((grid - centre[:, None, None, None]) ** 2).sum(0) <= (0.45 * min(shape)) ** 2


def _reference(fixed, moving, mask, patch, stride, bins, min_fraction):
    """The definition, patch by patch (slow loop): the vectorised map must equal it."""
    f, m = quantise(fixed, mask, bins), quantise(moving, mask, bins)
    total = np.zeros(fixed.shape)
    count = np.zeros(fixed.shape)
    padded = [-(-n // stride) * stride for n in fixed.shape]
    for i in range(0, padded[0] - patch + 1, stride):
        for j in range(0, padded[1] - patch + 1, stride):
            for k in range(0, padded[2] - patch + 1, stride):
                box = np.s_[i : i + patch, j : j + patch, k : k + patch]
                inside = mask[box]
                if inside.sum() < min_fraction * patch**3:
                    continue
                hist = np.bincount(f[box][inside] * bins + m[box][inside], minlength=bins * bins)
                value = patch_nmi_from_histograms(hist[None], bins)[0]
                total[box] += value * inside
                count[box] += inside
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def test_vectorised_map_equals_the_per_patch_definition():
    fixed, moving, mask = _texture(0), _texture(1) + 0.5 * _texture(0), _sector()
    result = patchwise_nmi(fixed, moving, mask, patch=8, stride=4, bins=8, min_fraction=0.3)
    expected = _reference(fixed, moving, mask, 8, 4, 8, 0.3)
    np.testing.assert_array_equal(np.isnan(result.map), np.isnan(expected))
    np.testing.assert_allclose(result.map[~np.isnan(expected)], expected[~np.isnan(expected)], atol=1e-6)
    assert result.patches > 10


def test_identical_images_score_one_and_independent_noise_scores_low():
    mask = _sector((40, 40, 40))
    image = _texture(2, (40, 40, 40))
    same = patchwise_nmi(image, image, mask, patch=16, stride=4)
    assert same.mean == pytest.approx(1.0, abs=1e-9)
    noise = patchwise_nmi(image, _texture(3, (40, 40, 40)), mask, patch=16, stride=4)
    assert noise.mean < 0.15
    # A monotone intensity map keeps the information (mutual information is invariant to it).
    remapped = patchwise_nmi(image, np.exp(2 * image), mask, patch=16, stride=4)
    assert remapped.mean > 0.5 > noise.mean


def test_alignment_scores_higher_than_a_shift():
    image = _texture(4, (40, 40, 40))
    moving = -image + 0.1 * _texture(5, (40, 40, 40))  # another "modality": inverted contrast + noise
    aligned = patchwise_nmi(image, moving, patch=16, stride=4).mean
    shifted = patchwise_nmi(image, np.roll(moving, 3, axis=0), patch=16, stride=4).mean
    assert aligned > shifted + 0.2


def test_values_in_range_nan_outside_the_mask():
    mask = _sector()
    result = patchwise_nmi(_texture(6), _texture(7), mask, patch=8, stride=4)
    inside = result.map[mask]
    assert np.isnan(result.map[~mask]).all()
    finite = inside[np.isfinite(inside)]
    assert finite.size > 0.5 * mask.sum() and (finite >= 0).all() and (finite <= 1).all()
    assert result.map.shape == SHAPE and result.map.dtype == np.float32


def test_constant_images_and_tiny_volumes():
    flat = patchwise_nmi(np.ones(SHAPE), np.ones(SHAPE), patch=8, stride=4)
    assert flat.mean == 0.0  # no information, not a perfect score
    tiny = patchwise_nmi(np.ones((5, 5, 5)), np.ones((5, 5, 5)), patch=16, stride=4)
    assert tiny.patches == 0 and np.isnan(tiny.mean) and np.isnan(tiny.map).all()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="multiple of stride"):
        patchwise_nmi(np.ones(SHAPE), np.ones(SHAPE), patch=10, stride=4)
    with pytest.raises(ValueError, match="one shape"):
        patchwise_nmi(np.ones(SHAPE), np.ones((4, 4, 4)))
