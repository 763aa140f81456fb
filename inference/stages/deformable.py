"""Stage 4, deformable: coupled convex optimisation, then Adam, fused across sequences, then
each group's field shrunk toward its rigid part (``[shrink]``, off at ``residual_weight = 1``).

Estimates are made per source of features: one joint estimate from all sequences of a group
(``fusion = "joint"``: one cost over the concatenated MIND features), one from the group's
primary sequence alone (``"primary"``: ceT1 when the group has it, see :func:`primary_sequence`;
its field is shared with T2), or one per sequence (``"none"``, ``"mean"``, ``"max"``), which
:func:`fuse` then combines into the group's field.
Fields are ``(1, 3, I, J, K)`` in working voxels, registered on the MR pre-warped by the
group's alignment: fixed voxel ``x`` matches the pre-warped MR at ``x + d(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from numpy.typing import NDArray

from remind2reg.inference.core.projection import shrink_toward_rigid
from remind2reg.inference.deformable.convex import convex_levels
from remind2reg.inference.deformable.instance import instance_optimise
from remind2reg.inference.settings import AdamSettings, ConvexSettings, ShrinkSettings
from remind2reg.inference.stages.features import Features
from remind2reg.inference.stages.transforms import Alignment, GroupTransform, primary_sequence


@dataclass(frozen=True)
class Estimate:
    """A field estimated from the features of ``sources`` (one sequence, or a group jointly)."""

    sources: tuple[str, ...]
    disp: torch.Tensor


def estimate_sources(alignments: tuple[Alignment, ...], fusion: str) -> tuple[tuple[str, ...], ...]:
    """What each estimate sees: a whole group under joint fusion, its primary sequence under
    primary fusion, else one sequence (one estimate per sequence)."""
    if fusion == "joint":
        return tuple(a.modalities for a in alignments)
    if fusion == "primary":
        return tuple((primary_sequence(a.modalities),) for a in alignments)
    return tuple((m,) for a in alignments for m in a.modalities)


def _features(features: Features, sources: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return features.joint(sources) if len(sources) > 1 else (features.us, features.mr[sources[0]])


def convex_estimates(
    features: Features,
    mask: torch.Tensor,
    alignments: tuple[Alignment, ...],
    fusion: str,
    settings: ConvexSettings,
) -> tuple[Estimate, ...]:
    """The coupled convex field of every estimate (see :func:`estimate_sources`)."""
    return tuple(
        Estimate(sources, convex_levels(*_features(features, sources), mask, settings))
        for sources in estimate_sources(alignments, fusion)
    )


def adam_estimates(
    features: Features, mask: torch.Tensor, estimates: tuple[Estimate, ...], settings: AdamSettings
) -> tuple[Estimate, ...]:
    """Each estimate refined by Adam instance optimisation (unchanged with 0 iterations)."""
    if settings.iterations <= 0:
        return estimates
    out = []
    for e in estimates:
        fixed, moving = _features(features, e.sources)
        out.append(replace(e, disp=instance_optimise(fixed, moving, e.disp, mask, settings)[0]))
    return tuple(out)


def fuse(
    alignments: tuple[Alignment, ...], estimates: tuple[Estimate, ...], fusion: str
) -> tuple[GroupTransform, ...]:
    """One field per group: its estimate, or the element-wise mean / max of its sequences' estimates."""
    out = []
    for alignment in alignments:
        fields = [e.disp for e in estimates if set(e.sources) <= set(alignment.modalities)]
        if len(fields) == 1:
            disp = fields[0]
        elif fusion == "mean":
            disp = torch.stack(fields).mean(0)
        elif fusion == "max":
            disp = torch.stack(fields).max(0).values
        else:
            raise ValueError(
                f"{len(fields)} estimates for group {alignment.modalities} under fusion {fusion!r}"
            )
        out.append(GroupTransform(alignment, disp))
    return tuple(out)


def shrink(
    transforms: tuple[GroupTransform, ...],
    mask: torch.Tensor,
    working_vox2world: NDArray,
    settings: ShrinkSettings,
) -> tuple[GroupTransform, ...]:
    """Each group's deformable field ``d`` (after its alignment) as ``r + w (d - r)``, ``r`` its
    rigid part inside the sector (:func:`~remind2reg.inference.core.projection.shrink_toward_rigid`)."""
    return tuple(
        replace(
            t,
            disp=shrink_toward_rigid(
                t.disp, mask, working_vox2world, settings.residual_weight, settings.inlier_fraction
            ),
        )
        for t in transforms
    )


def zero_fields(
    alignments: tuple[Alignment, ...], shape: tuple[int, ...], device: torch.device
) -> tuple[GroupTransform, ...]:
    """No deformable stage (``deformable = false``): a zero field after each alignment."""
    return tuple(GroupTransform(a, torch.zeros((1, 3, *shape), device=device)) for a in alignments)
