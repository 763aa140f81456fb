"""Stage 6, guard: keep the input alignment where the result does not raise the US/MR NMI.

The optimised criterion (MIND SSD) cannot judge its own result. Normalised mutual
information of the raw intensities inside the US sector is a different criterion: the MR as
given, warped by the whole result (alignment and field), must have a higher NMI with the US
than the MR at the input alignment. For a group (sequences sharing one transform) the NMI
gains of its sequences are summed, and the group is kept or dropped as a whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import normalised_mutual_information
from remind2reg.inference.stages.features import WorkingImages
from remind2reg.inference.stages.transforms import GroupTransform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardResult:
    transforms: tuple[GroupTransform, ...]  # dropped groups replaced by the input alignment
    nmi: dict[str, tuple[float, float]]  # by sequence: (NMI at the input alignment, NMI after)
    fallbacks: tuple[str, ...]  # the sequences whose result was dropped

    def notes(self) -> dict[str, object]:
        notes: dict[str, object] = {f"nmi_{mod}": value for mod, value in self.nmi.items()}
        notes.update({f"fallback_{mod}": True for mod in self.fallbacks})
        return notes


def nmi_before_after(
    us: torch.Tensor, mr: torch.Tensor, mask: torch.Tensor, total: torch.Tensor
) -> tuple[float, float]:
    """(NMI with the zero field, NMI with the field ``total``) of the US and one MR image."""
    before = normalised_mutual_information(us, mr, mask)
    after = normalised_mutual_information(us, warp(mr, total), mask)
    return before, after


@torch.no_grad()
def guard(
    images: WorkingImages, transforms: tuple[GroupTransform, ...], enabled: bool = True, case: str = "?"
) -> GuardResult:
    """Judge each group on ``images.mr``, the MR as given (not pre-warped)."""
    if not enabled:
        return GuardResult(transforms, {}, ())
    out, nmi, fallbacks = [], {}, []
    for t in transforms:
        total = t.total_field()
        gain = 0.0
        for mod in t.modalities:
            nmi[mod] = nmi_before_after(images.us, images.mr[mod], images.mask, total)
            gain = gain + (nmi[mod][1] - nmi[mod][0])
        if not gain <= 0:  # a NaN gain (too few voxels to judge) keeps the result
            out.append(t)
            continue
        for mod in t.modalities:
            log.warning(
                "Case %s: registering %s did not raise the NMI with the ultrasound (%.4f -> %.4f); "
                "keeping the input alignment",
                case,
                mod,
                *nmi[mod],
            )
            fallbacks.append(mod)
        out.append(t.identity())
    return GuardResult(tuple(out), nmi, tuple(fallbacks))
