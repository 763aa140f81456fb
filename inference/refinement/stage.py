"""The learned refinement stage: a residual field on the convex-Adam pre-warped MR, composed.

Conventions: every tensor lives on the WORKING grid (about 1 mm, isotropic), images are
``(1, 1, D, H, W)``, fields ``(1, 3, D, H, W)`` in working voxels along the array axes, from
FIXED (US) to MOVING (MR): ``warped(x) = moving(x + u(x))``.

:func:`refine` does, for a field ``disp`` from the earlier stages:

1. ``mr_w = warp(mr, disp)``: the pre-warped MR;
2. the network predicts a residual ``r`` (a diffeomorphism: an SVF integrated by scaling and
   squaring) from the normalised ``(us, mr_w)``;
3. optionally (``tto_steps > 0``), test-time optimisation: ``tto_steps`` Adam steps on the
   network weights (``tto_target = "network"``, a private copy) or on its half-resolution
   velocity (``"velocity"``) minimising, inside the sector ``mask``,
   ``similarity(us, warp(mr_w, r)) + smoothness * grad(r) + divergence * mean(div(r)^2)``
   with MIND-SSC (mean squared feature difference) or local NCC (``1 - mean NCC``);
4. the result ``disp_new(x) = r(x) + disp(x + r(x))`` (:func:`~inference.deformable.fields.compose`
   with ``first = r``): moving the pre-warped MR by ``r`` is the same as moving the MR by
   ``disp_new``, since ``mr_w(x + r(x)) = mr(x + r(x) + disp(x + r(x)))``.

Example (after convex + Adam, before the guard)::

    from remind2reg.inference.refinement.stage import RefineSettings, refine

    settings = RefineSettings(enabled=True, tto_steps=0)
    disp, info = refine(images.us, images.mr["0001"], images.mask, disp, settings)
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from remind2reg.inference.deformable.fields import compose, diffusion_penalty, warp
from remind2reg.inference.features.mind import box_filter, mind_ssc
from remind2reg.inference.refinement.model import RefinerNet, default_weights_path, load_weights, normalise

log = logging.getLogger(__name__)

SIMILARITIES = ("mind", "ncc")
TTO_TARGETS = ("network", "velocity")


@dataclass(frozen=True)
class RefineSettings:
    """Settings of :func:`refine` (all lengths in working voxels).

    ``enabled = False`` (the default until the benchmark shows a TRE gain) makes :func:`refine`
    return its input field unchanged. ``weights = None`` uses
    :func:`inference.refinement.model.default_weights_path` (``$REMIND2REG_WEIGHTS``, else the
    repository's ``weights/refiner_v2.pt``, else ``/opt/remind2reg/weights/refiner_v2.pt``).
    """

    enabled: bool = False
    weights: str | None = None
    tto_steps: int = 0  # test-time optimisation steps per pair (0: the network alone)
    tto_target: str = "velocity"  # "velocity": the predicted SVF; "network": the weights
    tto_lr: float = 0.05  # Adam step: half-grid voxels for "velocity"; use about 1e-4 for "network"
    similarity: str = "mind"  # "mind" | "ncc" (TTO only)
    smoothness: float = 1.0  # weight of the diffusion penalty of the residual (TTO only)
    divergence: float = 0.1  # alpha of alpha * mean(div(r)^2) (TTO only)
    ncc_radius: int = 3  # local NCC window half-size
    mind_radius: int = 1
    mind_dilation: int = 2
    # A residual whose mean length inside the sector exceeds this (working voxels) is rejected:
    # the input field is returned (a refinement is a small correction, not a new registration).
    max_mean_residual: float = 4.0

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"refine.similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.tto_target not in TTO_TARGETS:
            raise ValueError(f"refine.tto_target must be one of {TTO_TARGETS}, got {self.tto_target!r}")
        if self.tto_steps < 0:
            raise ValueError("refine.tto_steps must be >= 0")


@lru_cache(maxsize=4)
def _cached_model(path: str, device: str) -> RefinerNet:
    return load_weights(path, device)


def load_refiner(weights: str | Path | None, device: torch.device | str) -> RefinerNet:
    """The (cached, eval-mode, shared: do not modify) network of a weight file."""
    path = Path(weights) if weights is not None else default_weights_path()
    return _cached_model(str(path.resolve()), str(torch.device(device)))


def divergence(disp: torch.Tensor) -> torch.Tensor:
    """``div u`` ``(N, 1, D-2, H-2, W-2)`` by central differences (interior voxels)."""
    d_i = (disp[:, 0, 2:, 1:-1, 1:-1] - disp[:, 0, :-2, 1:-1, 1:-1]) / 2
    d_j = (disp[:, 1, 1:-1, 2:, 1:-1] - disp[:, 1, 1:-1, :-2, 1:-1]) / 2
    d_k = (disp[:, 2, 1:-1, 1:-1, 2:] - disp[:, 2, 1:-1, 1:-1, :-2]) / 2
    return (d_i + d_j + d_k)[:, None]


def jacobian_det(disp: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` ``(N, D-2, H-2, W-2)`` by central differences (interior voxels).

    The torch twin of :func:`evaluation.metrics.jacobian_determinant` (same ``[-0.5, 0, 0.5]``
    stencil; that one is numpy float64 on one ``(I, J, K, 3)`` field and crops 2 voxels per
    side). Kept so that :func:`refine` checks its field on the device without a float64 host
    copy of the whole field; only the reported minimum depends on it.
    """
    grads = torch.gradient(disp, dim=(2, 3, 4))  # grads[a][:, c] = d u_c / d x_a, central inside
    jac = torch.stack(grads, 2)[..., 1:-1, 1:-1, 1:-1]  # (N, 3 components, 3 axes, ...)
    jac = jac + torch.eye(3, dtype=disp.dtype, device=disp.device).view(1, 3, 3, 1, 1, 1)
    return torch.linalg.det(jac.movedim((1, 2), (-2, -1)))


def local_ncc(a: torch.Tensor, b: torch.Tensor, radius: int, eps: float = 1e-4) -> torch.Tensor:
    """Local normalised cross-correlation in ``(2r+1)^3`` boxes, ``(N, 1, ...)`` in [-1, 1]."""
    mu_a, mu_b = box_filter(a, radius), box_filter(b, radius)
    cov = box_filter(a * b, radius) - mu_a * mu_b
    var_a = (box_filter(a * a, radius) - mu_a**2).clamp_min(0)
    var_b = (box_filter(b * b, radius) - mu_b**2).clamp_min(0)
    return cov / torch.sqrt(var_a * var_b + eps)


class TTOLoss:
    """The test-time objective of a pair: ``loss(r) -> (total, similarity)`` (see module docstring).

    ``fixed``/``moving`` are the normalised US and pre-warped MR ``(1, 1, ...)``; ``mask`` the
    sector ``(1, 1, ...)``.
    """

    def __init__(
        self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, settings: RefineSettings
    ):
        self.settings = settings
        self.mask = (mask > 0).float()
        self.norm = self.mask.sum().clamp_min(1.0)
        self.fixed, self.moving = fixed, moving
        if settings.similarity == "mind":
            with torch.no_grad():
                self.fixed_feat = mind_ssc(fixed, settings.mind_radius, settings.mind_dilation, self.mask)
                self.moving_feat = mind_ssc(moving, settings.mind_radius, settings.mind_dilation)

    def similarity(self, r: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.similarity == "mind":
            diff = (self.fixed_feat - warp(self.moving_feat, r)) ** 2
            return (diff.mean(1, keepdim=True) * self.mask).sum() / self.norm
        ncc = local_ncc(self.fixed, warp(self.moving, r), s.ncc_radius)
        return 1.0 - (ncc * self.mask).sum() / self.norm

    def __call__(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        sim = self.similarity(r)
        total = sim + s.smoothness * diffusion_penalty(r) + s.divergence * divergence(r).square().mean()
        return total, sim


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def optimise_residual(
    net: RefinerNet,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    mask: torch.Tensor,
    settings: RefineSettings,
) -> tuple[torch.Tensor, list[float]]:
    """The residual ``r`` after ``settings.tto_steps`` Adam steps, and the loss of every step
    (the loss of the step's starting point, so ``losses[0]`` is the network's own prediction).

    ``fixed``/``moving`` are normalised ``(1, 1, ...)``. ``net`` is not modified (a copy is
    fine-tuned for ``tto_target = "network"``).
    """
    shape = tuple(fixed.shape[-3:])
    objective = TTOLoss(fixed, moving, mask, settings)
    x = net.padded_input(fixed, moving)
    if settings.tto_target == "network":
        model = copy.deepcopy(net).train()
        params = list(model.parameters())

        def residual() -> torch.Tensor:
            with _autocast(fixed.device):
                v = model.velocity(x)
            return model.displacement(v, shape)  # type: ignore[arg-type]

    else:
        model = net
        with torch.no_grad(), _autocast(fixed.device):
            v0 = net.velocity(x).float()
        velocity = torch.nn.Parameter(v0)
        params = [velocity]

        def residual() -> torch.Tensor:
            return model.displacement(velocity, shape)  # type: ignore[arg-type]

    optimiser = torch.optim.Adam(params, lr=settings.tto_lr)
    losses = []
    for _ in range(settings.tto_steps):
        optimiser.zero_grad(set_to_none=True)
        total, _ = objective(residual())
        total.backward()
        optimiser.step()
        losses.append(float(total.detach()))
    with torch.no_grad():
        r = residual()
        losses.append(float(objective(r)[0]))
    return r.detach(), losses


def refine(
    us: torch.Tensor,
    mr: torch.Tensor,
    mask: torch.Tensor | None,
    disp: torch.Tensor,
    settings: RefineSettings = RefineSettings(enabled=True),
    model: RefinerNet | None = None,
) -> tuple[torch.Tensor, dict]:
    """Refine ``disp`` (``(1, 3, D, H, W)``, working voxels, US -> MR) with the learned network.

    ``us``/``mr`` are working-grid images ``(1, 1, D, H, W)`` (raw intensities: they are
    normalised here), ``mask`` the US sector ``(1, 1, D, H, W)`` (None: everywhere). Returns
    ``(disp_new, info)`` with ``disp_new(x) = r(x) + disp(x + r(x))`` and ``info`` holding the
    residual's mean and max length (voxels), whether it was rejected (mean length in the sector
    above ``settings.max_mean_residual``: ``disp`` is then returned), the minimum Jacobian determinant of ``disp_new``,
    the TTO losses and the seconds taken. With ``settings.enabled`` False it returns ``disp``
    unchanged. ``model`` overrides the weights named by ``settings`` (tests, benchmarks).

    Raises :class:`~inference.errors.InputError` when the weights are missing.
    """
    if not settings.enabled:
        return disp, {"refined": False}
    t0 = time.perf_counter()
    device = disp.device
    net = model if model is not None else load_refiner(settings.weights, device)
    if mask is None:
        mask = torch.ones_like(us)
    mask = (mask > 0).float()
    disp32 = disp.float()
    with torch.no_grad():
        mr_w = warp(mr.float(), disp32)
        fixed = normalise(us, mask)
        moving = normalise(mr_w)
    losses: list[float] = []
    if settings.tto_steps > 0:
        with torch.enable_grad():
            r, losses = optimise_residual(net, fixed, moving, mask, settings)
    else:
        with torch.no_grad(), _autocast(device):
            r = net(fixed, moving).float()
    with torch.no_grad():
        disp_new = compose(r, disp32)
        length = r.norm(dim=1)
        inside = length[mask[:, 0] > 0]
        mean_inside = float(inside.mean()) if inside.numel() else float(length.mean())
        rejected = mean_inside > settings.max_mean_residual
        if rejected:
            log.warning(
                "Refinement rejected: mean residual %.1f voxels in the sector > %.1f; keeping the input field",
                mean_inside,
                settings.max_mean_residual,
            )
            disp_new = disp
        info = {
            "refined": not rejected,
            "rejected": rejected,
            "residual_mean_in_mask_vox": mean_inside,
            "residual_mean_vox": float(length.mean()),
            "residual_max_vox": float(length.max()),
            "min_jacobian": float(jacobian_det(disp_new).min()) if min(disp_new.shape[-3:]) > 2 else 1.0,
            "tto_losses": losses,
            "seconds": time.perf_counter() - t0,
        }
    log.debug(
        "Refinement: residual mean %.2f / max %.2f voxels, min det J %.3f, %.1f s",
        info["residual_mean_vox"],
        info["residual_max_vox"],
        info["min_jacobian"],
        info["seconds"],
    )
    return disp_new, info
