"""benchmarks/block_localisation.py: the per-block optimum of each similarity, on a known shift."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from remind2reg.inference.core.correlation import displacement_offsets


def test_every_block_finds_a_known_integer_shift(benchmark_script):
    benchmark_script("deformable_from_truth")  # block_localisation imports it by name
    scan = benchmark_script("block_localisation")
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(32, 32, 32)), 1.5).astype(np.float32)
    truth = (1, -2, 0)  # us(x) = mr(x + truth): the best shift of every block
    us_array = np.roll(image, [-t for t in truth], axis=(0, 1, 2))  # us[x] = image[x + truth]
    mr = torch.from_numpy(image)[None, None]
    us = torch.from_numpy(us_array)[None, None]
    mask = torch.zeros_like(us)
    mask[..., 4:28, 4:28, 4:28] = 1  # away from the wrapped border of np.roll
    costs = scan.block_costs(us, mr, us, mr, mask, block=8, largest=3, min_inside=0.75)
    shifts = displacement_offsets(3)
    for name in scan.SIMILARITIES:
        assert costs[name].shape == (len(shifts), 8)  # the 2^3 blocks inside 4..28 (75 % and more)
        best = shifts[costs[name].argmin(0)]
        assert (best == torch.tensor(truth)).all(), (name, best)
        distances = scan.best_shift_mm(costs[name], 3, 1.0)
        np.testing.assert_allclose(distances, np.sqrt(5.0))
