"""MIND-SSC: layout, invariances, and the masked variant for the US sector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from remind2reg.inference.core.mind import N_CHANNELS, NEIGHBOURS, PAIRS, box_filter, mind_ssc, shift


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.normal(size=(28, 32, 24)), 1.5) + 3.0
    return torch.from_numpy(vol.astype(np.float32))[None, None]


def test_channel_layout_is_the_12_sqrt2_pairs():
    assert N_CHANNELS == 12 and len(set(PAIRS)) == 12
    for a, b in PAIRS:
        assert sum((p - q) ** 2 for p, q in zip(NEIGHBOURS[a], NEIGHBOURS[b], strict=True)) == 2


def test_shift_and_box_filter_conventions():
    vol = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 1, 5, 6, 7)
    assert shift(vol, (1, 0, 0))[0, 0, 2, 3, 4] == vol[0, 0, 3, 3, 4]  # out[x] = vol[x + offset]
    assert shift(vol, (0, -2, 0))[0, 0, 2, 3, 4] == vol[0, 0, 2, 1, 4]
    box = box_filter(vol, 1)
    assert torch.isclose(box[0, 0, 2, 3, 4], vol[0, 0, 1:4, 2:5, 3:6].mean())


def test_shape_range_and_dtype(image):
    feat = mind_ssc(image, radius=1, dilation=2, dtype=torch.float16)
    assert feat.shape == (1, 12, 28, 32, 24) and feat.dtype == torch.float16
    assert float(feat.min()) > 0 and float(feat.max()) <= 1.0


def test_invariant_to_intensity_scale_and_offset(image):
    ref = mind_ssc(image, 1, 2)
    torch.testing.assert_close(mind_ssc(7.5 * image - 40.0, 1, 2), ref, atol=1e-4, rtol=1e-4)


def test_approximately_invariant_to_monotone_maps(image):
    ref = mind_ssc(image, 1, 2)
    mapped = mind_ssc(torch.exp(0.8 * image), 1, 2)
    corr = np.corrcoef(ref.flatten().numpy(), mapped.flatten().numpy())[0, 1]
    assert corr > 0.9
    # ... and clearly different from the features of an unrelated image.
    other = mind_ssc(torch.roll(image, 7, dims=2), 1, 2)
    assert np.corrcoef(ref.flatten().numpy(), other.flatten().numpy())[0, 1] < corr - 0.3


def test_masked_features_ignore_everything_outside_the_sector(image):
    mask = torch.zeros_like(image)
    mask[..., 4:24, 6:26, 3:20] = 1.0
    outside_a = image * mask  # zero outside, like an ultrasound sector: a strong false edge
    outside_b = image * mask + (1 - mask) * 100.0 * torch.rand_like(image)
    fa = mind_ssc(outside_a, 1, 2, mask=mask)
    fb = mind_ssc(outside_b, 1, 2, mask=mask)
    torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-5)
    assert float(fa[..., mask[0, 0] == 0].abs().max()) == 0.0
    # Unmasked, the sector border creates structure that the masked version does not have.
    plain = mind_ssc(outside_a, 1, 2)
    inner = mask.clone()
    inner[..., 4:6, :, :] = 0
    assert not torch.allclose(plain * mask, fa, atol=1e-2)


@pytest.mark.gpu
def test_cpu_and_gpu_agree(image):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = mind_ssc(image, 1, 2)
    gpu = mind_ssc(image.cuda(), 1, 2).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
