"""Images of label maps: the SynthMorph MR-like recipe and an ultrasound-like branch.

All functions take label maps ``(B, D, H, W)`` int64 (or their one-hot) and a
``torch.Generator`` and return float32 images ``(B, 1, D, H, W)``. Ranges are the defaults of
:class:`MRRecipe` and :class:`USRecipe` (drawn uniformly per sample unless stated otherwise).

MR-like (SynthMorph): per-label Gaussian intensities (mean ``U(0, 1)``, sd ``U(0, 0.1)``),
Gaussian blur (sd ``U(0, 1.5)`` voxels), multiplicative smooth bias field ``exp(b)`` (``b`` of
sd ``U(0, 0.3)`` on a 4^3 to 8^3 grid), min-max scaling to [0, 1], gamma ``exp(N(0, 0.25))``,
additive Gaussian noise (sd ``U(0, 0.05)``). Output in [0, 1] before the noise.

US-like (fixed side of a pair): per-label echogenicity ``U(0.05, 1.5)`` (each label anechoic,
``U(0, 0.1)``, with probability 0.2); bright boundaries: the gradient magnitude of a random
subset of the label channels (each with probability 0.5), gain ``U(0.5, 3)``; multiplicative
speckle: the envelope of complex Gaussian noise filtered by an anisotropic Gaussian PSF (sds
``U(0.5, 1.2)`` voxels across and ``U(0.3, 0.8)`` along the beam, Rayleigh distributed,
mean 1); a probe sector (apex ``U(5, 30)`` voxels beyond a random face, beam tilted up to 20
degrees, half-opening ``U(25, 40)`` degrees, imaged depth ``U(0.6, 1.1)`` times the size)
outside of which the image is 0; attenuation along the depth ``exp(-a r)``, ``a`` of
``U(0, 0.03)`` per voxel; log-like compression ``x^U(0.4, 0.8)``; scaled to [0, 1] by its 99th
percentile. :func:`us_image` also returns the sector mask ``(B, 1, D, H, W)`` in {0, 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from remind2reg.inference.core.fields import identity_voxels
from remind2reg.inference.core.mind import separable_filter
from remind2reg.training.deform import upsampled_noise
from remind2reg.training.labels import one_hot


@dataclass(frozen=True)
class MRRecipe:
    mean: tuple[float, float] = (0.0, 1.0)
    std: tuple[float, float] = (0.0, 0.1)
    blur: tuple[float, float] = (0.0, 1.5)  # voxels
    bias_std: tuple[float, float] = (0.0, 0.3)
    bias_nodes: tuple[int, int] = (4, 8)
    gamma_std: float = 0.25
    noise: tuple[float, float] = (0.0, 0.05)


@dataclass(frozen=True)
class USRecipe:
    echo: tuple[float, float] = (0.05, 1.5)
    anechoic_p: float = 0.2
    anechoic: tuple[float, float] = (0.0, 0.1)
    boundary_p: float = 0.5
    boundary_gain: tuple[float, float] = (0.5, 3.0)
    psf_lateral: tuple[float, float] = (0.5, 1.2)  # voxels
    psf_axial: tuple[float, float] = (0.3, 0.8)
    apex_distance: tuple[float, float] = (5.0, 30.0)  # voxels beyond the entry face
    tilt_deg: float = 20.0
    half_opening_deg: tuple[float, float] = (25.0, 40.0)
    depth_fraction: tuple[float, float] = (0.6, 1.1)  # imaged depth / volume size
    attenuation: tuple[float, float] = (0.0, 0.03)  # per voxel
    compression: tuple[float, float] = (0.4, 0.8)


def _uniform(generator: torch.Generator, lo_hi: tuple[float, float], n: int) -> torch.Tensor:
    """``(n,)`` draws of ``U(lo, hi)``."""
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _u(generator: torch.Generator, lo_hi: tuple[float, float]) -> float:
    return float(_uniform(generator, lo_hi, 1))


def gaussian_blur(x: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, D, H, W)`` with sd ``sigmas`` (voxels) per axis.

    A Gaussian kernel of radius ``ceil(3 sd)`` through
    :func:`remind2reg.inference.core.mind.separable_filter` (replicate padding); an sd below 0.1
    voxel leaves that axis alone.
    """

    def kernel(s: float) -> torch.Tensor | None:
        if s < 0.1:
            return None
        r = max(1, math.ceil(3 * s))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        return k / k.sum()

    return separable_filter(x, tuple(kernel(s) for s in sigmas))


def bias_field(
    shape: tuple[int, int, int], generator: torch.Generator, std: float, nodes: int
) -> torch.Tensor:
    """``exp(b)`` ``(1, 1, *shape)``: ``b`` white noise of sd ``std`` on ``nodes^3``, upsampled."""
    return torch.exp(upsampled_noise((nodes, nodes, nodes), shape, generator, std=std))


def mr_image(labels: torch.Tensor, generator: torch.Generator, recipe: MRRecipe = MRRecipe()) -> torch.Tensor:
    """MR-like images ``(B, 1, D, H, W)`` of label maps ``(B, D, H, W)`` (SynthMorph recipe)."""
    n_labels = int(labels.max()) + 1
    shape = tuple(labels.shape[-3:])
    out = []
    for b in range(labels.shape[0]):
        lab = labels[b]
        means = _uniform(generator, recipe.mean, n_labels)
        stds = _uniform(generator, recipe.std, n_labels)
        img = means[lab] + stds[lab] * torch.randn(shape, generator=generator)
        img = img[None, None]
        s = _u(generator, recipe.blur)
        img = gaussian_blur(img, (s, s, s))
        nodes = int(torch.randint(recipe.bias_nodes[0], recipe.bias_nodes[1] + 1, (1,), generator=generator))
        img = img * bias_field(shape, generator, _u(generator, recipe.bias_std), nodes)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo).clamp_min(1e-6)
        gamma = math.exp(float(torch.randn(1, generator=generator)) * recipe.gamma_std)
        img = img.clamp_min(0) ** gamma
        img = img + torch.randn(img.shape, generator=generator) * _u(generator, recipe.noise)
        out.append(img)
    return torch.cat(out, 0).float()


def _beam_frame(generator: torch.Generator, tilt_deg: float) -> tuple[int, torch.Tensor]:
    """A random entry face's axis and a unit beam direction tilted by up to ``tilt_deg``."""
    axis = int(torch.randint(0, 3, (1,), generator=generator))
    side = 1 if float(torch.rand(1, generator=generator)) < 0.5 else -1
    d = torch.zeros(3)
    d[axis] = float(side)
    tilt = torch.randn(3, generator=generator)
    tilt[axis] = 0
    tilt = (
        tilt
        / tilt.norm().clamp_min(1e-6)
        * math.tan(math.radians(tilt_deg) * float(torch.rand(1, generator=generator)))
    )
    d = d + tilt
    return axis, d / d.norm()


def sector(
    shape: tuple[int, int, int], generator: torch.Generator, recipe: USRecipe = USRecipe()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random probe sector: (mask ``(D, H, W)`` bool, depth ``r`` from the apex (voxels),
    beam unit direction ``(3,)``). The beam enters through a random face of the volume."""
    axis, d = _beam_frame(generator, recipe.tilt_deg)
    centre = torch.tensor([(n - 1) / 2 for n in shape])
    entry = centre - d * (shape[axis] / 2)
    apex = entry - d * _u(generator, recipe.apex_distance)
    v = identity_voxels(shape)[0] - apex.view(3, 1, 1, 1)  # (3, D, H, W), voxels along i, j, k
    r = v.norm(dim=0)
    cos = (v * d.view(3, 1, 1, 1)).sum(0) / r.clamp_min(1e-6)
    half = math.radians(_u(generator, recipe.half_opening_deg))
    near = float((entry - apex).norm())
    far = near + _u(generator, recipe.depth_fraction) * shape[axis]
    mask = (cos >= math.cos(half)) & (r >= near) & (r <= far)
    return mask, r - near, d


def boundaries(onehot: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """``(1, 1, ...)`` sum over the selected label channels of the central-difference gradient
    magnitude of the one-hot (about 0.5 to 1 on a boundary, 0 inside labels)."""
    sel = onehot[:, channels]
    p = F.pad(sel, (1, 1, 1, 1, 1, 1), mode="replicate")
    gi = (p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]) / 2
    gj = (p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]) / 2
    gk = (p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]) / 2
    return (gi**2 + gj**2 + gk**2).sqrt().sum(1, keepdim=True)


def speckle(
    shape: tuple[int, int, int], generator: torch.Generator, sigmas: tuple[float, float, float]
) -> torch.Tensor:
    """``(1, 1, *shape)`` envelope of PSF-filtered complex Gaussian noise, scaled to mean 1."""
    z = torch.randn((1, 2, *shape), generator=generator)
    z = gaussian_blur(z, sigmas)
    env = z.square().sum(1, keepdim=True).sqrt()
    return env / env.mean().clamp_min(1e-6)


def us_image(
    labels: torch.Tensor, generator: torch.Generator, recipe: USRecipe = USRecipe()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ultrasound-like images ``(B, 1, D, H, W)`` in [0, 1] (0 outside the sector) and the
    sector masks ``(B, 1, D, H, W)`` (float 0/1) of label maps ``(B, D, H, W)``."""
    n_labels = int(labels.max()) + 1
    shape = tuple(labels.shape[-3:])
    images, masks = [], []
    for b in range(labels.shape[0]):
        lab = labels[b]
        echo = _uniform(generator, recipe.echo, n_labels)
        dark = torch.rand(n_labels, generator=generator) < recipe.anechoic_p
        echo = torch.where(dark, _uniform(generator, recipe.anechoic, n_labels), echo)
        amp = echo[lab][None, None]
        chosen = torch.nonzero(torch.rand(n_labels, generator=generator) < recipe.boundary_p).flatten()
        if chosen.numel():
            edge = boundaries(one_hot(lab[None], n_labels), chosen)
            amp = amp + _u(generator, recipe.boundary_gain) * gaussian_blur(edge, (0.5, 0.5, 0.5))
        mask, depth, d = sector(shape, generator, recipe)
        lateral = _u(generator, recipe.psf_lateral)
        axial = _u(generator, recipe.psf_axial)
        # Anisotropic PSF: the axis closest to the beam gets the axial sd.
        beam_axis = int(d.abs().argmax())
        sig = [lateral] * 3
        sig[beam_axis] = axial
        img = amp * speckle(shape, generator, tuple(sig))
        img = img * torch.exp(-_u(generator, recipe.attenuation) * depth.clamp_min(0))[None, None]
        img = img.clamp_min(0) ** _u(generator, recipe.compression)
        m = mask[None, None].float()
        img = img * m
        inside = img[m > 0]
        if inside.numel() > 10:
            sub = inside[:: max(1, inside.numel() // 100_000)]
            img = (img / torch.quantile(sub, 0.99).clamp_min(1e-6)).clamp(0, 1)
        images.append(img)
        masks.append(m)
    return torch.cat(images, 0).float(), torch.cat(masks, 0)
