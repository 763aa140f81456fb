"""Stage 5, refinement: a learned residual on the pre-warped MR, composed with the field.

For a field ``disp`` from the earlier stages (working grid, US -> MR):

1. ``mr_w = warp(mr, disp)``: the pre-warped MR;
2. the network predicts a residual ``r`` (a diffeomorphism: an SVF integrated by scaling and
   squaring) from the normalised ``(us, mr_w)``; optionally refined by test-time optimisation
   (:mod:`remind2reg.inference.refinement.tto`);
3. ``disp_new(x) = r(x) + disp(x + r(x))`` (:func:`~remind2reg.inference.core.fields.compose`
   with ``first = r``): moving the pre-warped MR by ``r`` is the same as moving the MR by
   ``disp_new``, since ``mr_w(x + r(x)) = mr(x + r(x) + disp(x + r(x)))``.

A residual whose mean length in the sector exceeds ``max_mean_residual`` is rejected and
``disp`` is kept (a refinement is a small correction, not a new registration).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

from remind2reg.inference.core.fields import compose, jacobian_det, warp
from remind2reg.inference.refinement.model import RefinerNet, normalise
from remind2reg.inference.refinement.tto import autocast, load_refiner, optimise_residual
from remind2reg.inference.settings import RefineSettings
from remind2reg.inference.stages.features import WorkingImages
from remind2reg.inference.stages.transforms import GroupTransform, primary_sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineResult:
    transforms: tuple[GroupTransform, ...]
    info: dict[str, dict]  # by the sequence refined (the first of each group)

    def notes(self) -> dict[str, object]:
        return {
            f"refine_{mod}": {k: v for k, v in info.items() if k != "tto_losses"}
            for mod, info in self.info.items()
        }


def _residual(
    net: RefinerNet, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, settings: RefineSettings
) -> tuple[torch.Tensor, list[float]]:
    """The network's residual ``r`` for normalised images, after the optional TTO."""
    if settings.tto_steps > 0:
        with torch.enable_grad():
            return optimise_residual(net, fixed, moving, mask, settings)
    with torch.no_grad(), autocast(fixed.device):
        return net(fixed, moving).float(), []


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
    ``(disp_new, info)``; ``info`` holds the residual's mean and max length (voxels), whether it
    was rejected, the minimum Jacobian determinant of ``disp_new``, the TTO losses and the
    seconds taken. With ``settings.enabled`` False it returns ``disp`` unchanged. ``model``
    overrides the weights named by ``settings`` (tests, benchmarks).

    Raises :class:`~remind2reg.inference.errors.InputError` when the weights are missing.
    """
    if not settings.enabled:
        return disp, {"refined": False}
    t0 = time.perf_counter()
    net = model if model is not None else load_refiner(settings.weights, disp.device)
    mask = (torch.ones_like(us) if mask is None else mask > 0).float()
    disp32 = disp.float()
    with torch.no_grad():
        fixed, moving = normalise(us, mask), normalise(warp(mr.float(), disp32))
    r, losses = _residual(net, fixed, moving, mask, settings)
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
    log.debug("Refinement: residual mean %.2f / max %.2f voxels, min det J %.3f, %.1f s",
              info["residual_mean_vox"], info["residual_max_vox"], info["min_jacobian"], info["seconds"])  # fmt: skip
    return disp_new, info


def refine_transforms(
    images: WorkingImages, transforms: tuple[GroupTransform, ...], settings: RefineSettings
) -> RefineResult:
    """Refine each group's field on its primary sequence (ceT1 when present); ``images.mr`` is
    the MR pre-warped by the global stage."""
    out, info = [], {}
    for t in transforms:
        mod = primary_sequence(t.modalities)
        disp, info[mod] = refine(images.us, images.mr[mod], images.mask, t.disp, settings)
        out.append(replace(t, disp=disp))
    return RefineResult(tuple(out), info)
