"""Stage 3, global alignment: one rigid/affine transform per group, and the MR pre-warped by it.

Engines: MIND-SSC block matching with a least-trimmed-squares fit
(:mod:`remind2reg.inference.affine.blockmatch`, the groups' features matched jointly) or
NiftyReg ``reg_aladin`` (:mod:`remind2reg.inference.affine.niftyreg`, on the first sequence
of the group), or a transform given by the caller (:func:`given_alignment`, the FireANTs
``init_affine=`` pattern: a rigid from another tool or a tracked probe). The later stages
register the pre-warped MR ``prewarped(x) = mr(vox2vox @ x)`` (working voxels).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from numpy.typing import NDArray

from remind2reg.inference.affine.blockmatch import block_match
from remind2reg.inference.affine.rigid_search import rigid_search
from remind2reg.inference.core.fields import affine_field, warp
from remind2reg.inference.geometry import affine_problem
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.settings import AffineStageSettings, MindSettings
from remind2reg.inference.stages.features import (
    Features,
    WorkingCase,
    WorkingImages,
    feature_dtype,
    mr_features,
)
from remind2reg.inference.stages.sector import Sector
from remind2reg.inference.stages.transforms import Alignment, primary_sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlobalResult:
    """The alignment of each group, and the working images and features of the pre-warped MR."""

    alignments: tuple[Alignment, ...]
    case: WorkingCase  # images.mr / features.mr: the MR pre-warped by the alignment

    def notes(self) -> dict[str, object]:
        return {
            f"fixed2moving_world_{mod}": np.round(a.fixed2moving_world, 6).tolist()
            for a in self.alignments
            if a.fixed2moving_world is not None
            for mod in a.modalities
        }


def header_alignment(case: WorkingCase, groups: tuple[tuple[str, ...], ...]) -> GlobalResult:
    """No global stage: every group keeps the header alignment; the MR is not warped."""
    return GlobalResult(tuple(Alignment(g) for g in groups), case)


def fixed2moving_world(
    fixed: Image,
    moving: Mapping[str, Image],
    case: WorkingCase,
    sector: Sector,
    group: tuple[str, ...],
    settings: AffineStageSettings,
    mind: MindSettings,
) -> NDArray[np.float64]:
    """The global transform of one group by the configured engine."""
    if settings.method == "search":
        result = rigid_search(
            case.features.us, case.images.mask, case.images.mr[primary_sequence(group)],
            sector.grid.vox2world(fixed.vox2world), mind, settings.search,
        )  # fmt: skip
        log.info(
            "Rigid search: start %s deg, costs %s", np.round(result.start_deg, 1), np.round(result.costs, 4)
        )
        return result.fixed2moving_world
    if settings.method == "blockmatch":
        us, mr = case.features.joint(group)
        working_vox2world = sector.grid.vox2world(fixed.vox2world)
        result = block_match(
            us, mr, case.images.mask, working_vox2world, settings.transform, settings.blockmatch
        )
        return result.fixed2moving_world
    from remind2reg.inference.affine.niftyreg import run_aladin  # needs the NiftyReg binaries

    aladin = replace(settings.aladin, rigid_only=settings.transform == "rigid")
    return run_aladin(fixed, moving[primary_sequence(group)], sector.mask, aladin).fixed2moving_world


def checked_fixed2moving(matrix: object) -> NDArray[np.float64]:
    """``matrix`` as a float64 4x4 map of fixed world mm to moving world mm; raises ValueError
    unless it is finite, affine (last row ``0 0 0 1``) and invertible."""
    m = np.asarray(matrix, dtype=np.float64)
    problem = affine_problem(m)
    if problem is not None:
        raise ValueError(f"fixed2moving_world {problem}")
    return m


@torch.no_grad()
def prewarped(
    case: WorkingCase,
    sector: Sector,
    fixed: Image,
    matrices: Mapping[tuple[str, ...], NDArray[np.float64]],
    mind: MindSettings,
) -> GlobalResult:
    """Each group's alignment from its ``fixed2moving_world`` matrix, and its MR images pre-warped
    by it on the working grid (``prewarped(x) = mr(vox2vox @ x)``, trilinear) with their features
    recomputed."""
    w = sector.grid.vox2world(fixed.vox2world)
    w_inv = np.linalg.inv(w)
    shape = tuple(case.images.us.shape[-3:])
    alignments, warped = [], {}
    for group, matrix in matrices.items():
        vox2vox = w_inv @ matrix @ w  # working voxel -> working voxel
        alignments.append(Alignment(group, matrix, vox2vox))
        for mod in group:
            warped[mod] = warp(case.images.mr[mod], affine_field(vox2vox, shape, case.images.us.device))  # type: ignore[arg-type]
    dtype = feature_dtype(case.images.us.device)
    images = WorkingImages(case.images.us, case.images.mask, warped)
    features = Features(case.features.us, mr_features(warped, mind, dtype))
    return GlobalResult(tuple(alignments), WorkingCase(images, features))


@torch.no_grad()
def align_globally(
    fixed: Image,
    moving: Mapping[str, Image],
    case: WorkingCase,
    sector: Sector,
    groups: tuple[tuple[str, ...], ...],
    settings: AffineStageSettings,
    mind: MindSettings,
) -> GlobalResult:
    """Align each group by the configured engine, then pre-warp its MR images and recompute their features."""
    matrices = {g: fixed2moving_world(fixed, moving, case, sector, g, settings, mind) for g in groups}
    return prewarped(case, sector, fixed, matrices, mind)


def given_alignment(
    fixed: Image,
    case: WorkingCase,
    sector: Sector,
    groups: tuple[tuple[str, ...], ...],
    fixed2moving: NDArray[np.float64],
    mind: MindSettings,
) -> GlobalResult:
    """The global stage replaced by a given transform, the same for every group
    (``moving_world = fixed2moving @ fixed_world``; checked by the caller with
    :func:`checked_fixed2moving`); later stages treat it as the global stage's."""
    return prewarped(case, sector, fixed, dict.fromkeys(groups, fixed2moving), mind)
