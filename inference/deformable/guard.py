"""An independent check of a registration result against the input alignment.

The optimised criterion (MIND SSD) cannot judge its own result. Normalised mutual
information of the raw intensities, ``NMI = (H(F) + H(M)) / H(F, M)`` (Studholme), measured
inside the US sector, is a different criterion: if the registered field does not raise it
over the zero field, the registration is not trusted and the input alignment is kept.
"""

from __future__ import annotations

import torch
from remind2reg.inference.deformable.fields import warp


def normalised_mutual_information(
    fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, bins: int = 32
) -> float:
    """NMI of two images ``(1, 1, I, J, K)`` over the voxels where ``mask > 0``.

    Intensities are binned between their 1st and 99th percentile inside the mask.
    """
    inside = mask[0, 0] > 0
    f, m = fixed[0, 0][inside].float(), moving[0, 0][inside].float()
    if f.numel() < 100:
        return float("nan")

    def to_bins(x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.quantile(
            x[:: max(1, x.numel() // 100_000)], torch.tensor([0.01, 0.99], device=x.device)
        )
        return ((x - lo) / (hi - lo).clamp_min(1e-6) * (bins - 1)).round().clamp(0, bins - 1).long()

    joint = torch.bincount(to_bins(f) * bins + to_bins(m), minlength=bins * bins).float().reshape(bins, bins)
    p = joint / joint.sum()

    def entropy(q: torch.Tensor) -> torch.Tensor:
        q = q[q > 0]
        return -(q * q.log()).sum()

    return float((entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p.flatten()))


def check_against_identity(
    fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, disp: torch.Tensor
) -> tuple[float, float]:
    """(NMI with the zero field, NMI with ``disp``) of the US and a moving image."""
    before = normalised_mutual_information(fixed, moving, mask)
    after = normalised_mutual_information(fixed, warp(moving, disp), mask)
    return before, after
