"""Test-time optimisation (TTO) of the refinement network's residual, per image pair.

Sneha Sree C et al. (GE HealthCare): fine-tune a pretrained registration network on one
pair for a few steps with a similarity, a smoothness and a divergence term. Here
``tto_steps`` Adam steps update either the network's half-resolution velocity
(``tto_target = "velocity"``) or a private copy of its weights (``"network"``), minimising
inside the sector ``mask``

    similarity(us, warp(mr_w, r)) + smoothness * diffusion(r) + divergence * mean(div(r)^2)

with MIND-SSC (masked mean squared feature difference) or local NCC (``1 - mean NCC``).
Images are normalised ``(1, 1, D, H, W)`` on the working grid; ``r`` is ``(1, 3, D, H, W)`` in
working voxels, fixed -> moving: ``warped(x) = mr_w(x + r(x))``.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import torch

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import diffusion_penalty, divergence_penalty, masked_ssd, ncc_loss
from remind2reg.inference.core.mind import mind_ssc
from remind2reg.inference.paths import default_weights_path
from remind2reg.inference.refinement.model import RefinerNet, load_weights
from remind2reg.inference.settings import RefineSettings


@lru_cache(maxsize=4)
def _cached_model(path: str, device: str) -> RefinerNet:
    return load_weights(path, device)


def load_refiner(weights: str | Path | None, device: torch.device | str) -> RefinerNet:
    """The (cached, eval-mode, shared: do not modify) network of a weight file."""
    path = Path(weights) if weights is not None else default_weights_path()
    return _cached_model(str(path.resolve()), str(torch.device(device)))


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere (the network's precision policy)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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
        self.fixed, self.moving = fixed, moving
        if settings.similarity == "mind":
            with torch.no_grad():
                self.fixed_feat = mind_ssc(fixed, settings.mind_radius, settings.mind_dilation, self.mask)
                self.moving_feat = mind_ssc(moving, settings.mind_radius, settings.mind_dilation)

    def similarity(self, r: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.similarity == "mind":
            return masked_ssd(self.fixed_feat, warp(self.moving_feat, r), self.mask)
        return ncc_loss(self.fixed, warp(self.moving, r), self.mask, s.ncc_radius)

    def __call__(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        sim = self.similarity(r)
        total = sim + s.smoothness * diffusion_penalty(r) + s.divergence * divergence_penalty(r)
        return total, sim


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
            with autocast(fixed.device):
                v = model.velocity(x)
            return model.displacement(v, shape)  # type: ignore[arg-type]

    else:
        model = net
        with torch.no_grad(), autocast(fixed.device):
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
