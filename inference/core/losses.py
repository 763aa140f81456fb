"""Similarity measures and regularisers as pure functions (ground floor).

Used alike by the deformable stage (Adam), the guard (NMI), the refinement's test-time
optimisation and the trainer. Conventions: images and features are ``(N, C, I, J, K)``,
masks and weights ``(N, 1, I, J, K)`` (broadcast over channels), displacement fields
``(N, 3, I, J, K)`` in voxels along the array axes. Every function checks its shapes and
says which argument is wrong. Losses are "lower is better" unless the name says otherwise
(:func:`normalised_mutual_information`, :func:`soft_dice` and :func:`local_ncc` are scores).
"""

from __future__ import annotations

import torch

from remind2reg.inference.core.mind import box_filter


def _check_volume(name: str, t: torch.Tensor, channels: int | None = None) -> None:
    if t.dim() != 5:
        raise ValueError(f"{name}: expected a tensor (N, C, I, J, K), got shape {tuple(t.shape)}")
    if channels is not None and t.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got shape {tuple(t.shape)}")


def _check_pair(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    _check_volume(a_name, a)
    _check_volume(b_name, b)
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape")


def _check_mask(name: str, mask: torch.Tensor, like: torch.Tensor) -> None:
    _check_volume(name, mask, channels=1)
    if mask.shape[0] != like.shape[0] or mask.shape[2:] != like.shape[2:]:
        raise ValueError(f"{name} {tuple(mask.shape)} does not match the images {tuple(like.shape)}")


def masked_ssd(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean squared difference ``sum(w (F - M)^2) / (max(sum w, 1) C)`` (a scalar).

    ``fixed``/``moving`` ``(N, C, I, J, K)`` (e.g. MIND-SSC features), ``weight``
    ``(N, 1, I, J, K)`` (e.g. the fraction of each voxel inside the US sector).
    """
    _check_pair("fixed", fixed, "moving", moving)
    _check_mask("weight", weight, fixed)
    return (((fixed - moving) ** 2) * weight).sum() / (weight.sum().clamp_min(1.0) * fixed.shape[1])


def geman_mcclure(residual: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``r / (r + s)`` elementwise for squared residuals ``r >= 0`` and a scale ``s > 0``: about
    ``r / s`` for small residuals, saturating at 1 for large ones (robust M-estimator)."""
    return residual / (residual + scale)


def robust_masked_ssd(
    fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Weighted mean over voxels of ``geman_mcclure(mean_c (F - M)^2, scale)`` (a scalar): voxels
    whose features nothing explains (a resection cavity's wall) saturate instead of pulling."""
    _check_pair("fixed", fixed, "moving", moving)
    _check_mask("weight", weight, fixed)
    per_voxel = ((fixed - moving) ** 2).mean(1, keepdim=True)
    return (geman_mcclure(per_voxel, scale) * weight).sum() / weight.sum().clamp_min(1.0)


def local_ncc(a: torch.Tensor, b: torch.Tensor, radius: int, eps: float = 1e-4) -> torch.Tensor:
    """Local normalised cross-correlation in ``(2r+1)^3`` boxes, ``(N, C, ...)`` in [-1, 1] (a score)."""
    _check_pair("a", a, "b", b)
    mu_a, mu_b = box_filter(a, radius), box_filter(b, radius)
    cov = box_filter(a * b, radius) - mu_a * mu_b
    var_a = (box_filter(a * a, radius) - mu_a**2).clamp_min(0)
    var_b = (box_filter(b * b, radius) - mu_b**2).clamp_min(0)
    return cov / torch.sqrt(var_a * var_b + eps)


def ncc_loss(fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``1 - mean of the local NCC inside mask`` (a scalar); images ``(N, 1, ...)``."""
    _check_mask("mask", mask, fixed)
    ncc = local_ncc(fixed, moving, radius)
    return 1.0 - (ncc * mask).sum() / mask.sum().clamp_min(1.0)


def normalised_mutual_information(
    fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, bins: int = 32
) -> float:
    """NMI ``(H(F) + H(M)) / H(F, M)`` (Studholme; a score in [1, 2]) inside ``mask > 0``.

    Images and mask ``(1, 1, I, J, K)``; intensities are binned between their 1st and 99th
    percentile inside the mask. NaN when fewer than 100 voxels are inside.
    """
    _check_pair("fixed", fixed, "moving", moving)
    _check_mask("mask", mask, fixed)
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


def soft_dice(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean Dice over the labels present (in ``a`` or ``b`` inside ``mask``), per sample ``(N,)``.

    ``a``/``b``: one-hot or soft label maps ``(N, L, ...)``; a score in [0, 1].
    """
    _check_pair("a", a, "b", b)
    _check_mask("mask", mask, a)
    dims = (2, 3, 4)
    inter = (a * b * mask).sum(dims)
    total = (a * mask).sum(dims) + (b * mask).sum(dims)
    present = (total > 1.0).float()
    dice = 2 * inter / total.clamp_min(1e-6)
    return (dice * present).sum(1) / present.sum(1).clamp_min(1.0)


def diffusion_penalty(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of each component along each axis (a scalar)."""
    _check_volume("disp", disp, channels=3)
    d_i = disp[:, :, 1:] - disp[:, :, :-1]
    d_j = disp[:, :, :, 1:] - disp[:, :, :, :-1]
    d_k = disp[..., 1:] - disp[..., :-1]
    return (d_i**2).mean() + (d_j**2).mean() + (d_k**2).mean()


def divergence(disp: torch.Tensor) -> torch.Tensor:
    """``div u`` ``(N, 1, I-2, J-2, K-2)`` by central differences (interior voxels)."""
    _check_volume("disp", disp, channels=3)
    d_i = (disp[:, 0, 2:, 1:-1, 1:-1] - disp[:, 0, :-2, 1:-1, 1:-1]) / 2
    d_j = (disp[:, 1, 1:-1, 2:, 1:-1] - disp[:, 1, 1:-1, :-2, 1:-1]) / 2
    d_k = (disp[:, 2, 1:-1, 1:-1, 2:] - disp[:, 2, 1:-1, 1:-1, :-2]) / 2
    return (d_i + d_j + d_k)[:, None]


def divergence_penalty(disp: torch.Tensor) -> torch.Tensor:
    """``mean(div(u)^2)`` (a scalar), the TTO paper's ``alpha |div u|^2`` term without alpha."""
    return divergence(disp).square().mean()


def gradient_magnitude(image: torch.Tensor) -> torch.Tensor:
    """``|grad I|`` ``(N, 1, I, J, K)`` by central differences (one-sided at the border)."""
    _check_volume("image", image, channels=1)
    grads = torch.gradient(image.float(), dim=(2, 3, 4))
    return torch.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2)


def lc2_maps(us: torch.Tensor, mr: torch.Tensor, radius: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The two voxel maps of LC2 (Wein et al.): ``(explained, var_us)``, each ``(1, 1, I, J, K)``.

    In the ``(2r+1)^3`` patch around each voxel the US is regressed on the MR, its gradient
    magnitude and a constant by least squares (``us ~ a mr + b |grad mr| + c``); ``explained``
    is the variance of the US that the fit explains (at most ``var_us``, the US variance in the
    patch). :func:`lc2` aggregates them over a mask; other aggregations (per block) use them too.
    """
    _check_pair("us", us, "mr", mr)
    u, m = us.float(), mr.float()
    g = gradient_magnitude(m)

    def box(x: torch.Tensor) -> torch.Tensor:
        return box_filter(x, radius)

    mu_u, mu_m, mu_g = box(u), box(m), box(g)
    var_u = (box(u * u) - mu_u**2).clamp_min(0)
    c_mm = box(m * m) - mu_m**2
    c_gg = box(g * g) - mu_g**2
    c_mg = box(m * g) - mu_m * mu_g
    b_m = box(u * m) - mu_u * mu_m
    b_g = box(u * g) - mu_u * mu_g
    # Explained variance b^T C^-1 b of the 2x2 covariance C of (mr, |grad mr|), regularised.
    eps = 1e-6 * (c_mm.mean() + c_gg.mean()) + 1e-12
    det = (c_mm + eps) * (c_gg + eps) - c_mg**2
    explained = ((c_gg + eps) * b_m**2 - 2 * c_mg * b_m * b_g + (c_mm + eps) * b_g**2) / det.clamp_min(1e-12)
    return torch.minimum(explained.clamp_min(0), var_u), var_u


def lc2(us: torch.Tensor, mr: torch.Tensor, mask: torch.Tensor, radius: int = 3) -> float:
    """Linear correlation of linear combination (LC2, Wein et al.; a score in [0, 1]).

    In the ``(2r+1)^3`` patch around each voxel the US is regressed on the MR, its gradient
    magnitude and a constant by least squares (``us ~ a mr + b |grad mr| + c``): a bright wall
    around a dark region is explained by the gradient term. The score is
    ``sum_x mask (var_us - residual) / sum_x mask var_us``: the patches' explained variance,
    weighted by the US variance (flat patches, such as an anechoic cavity, weigh nothing).
    Images and mask ``(1, 1, I, J, K)``.
    """
    _check_mask("mask", mask, us)
    explained, var_u = lc2_maps(us, mr, radius)  # checks the pair
    w = (mask > 0).float()
    return float((w * explained).sum() / (w * var_u).sum().clamp_min(1e-12))
