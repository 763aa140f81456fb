"""The registration pipeline of one case: the list of its stages (:mod:`remind2reg.inference.stages`).

``run_pipeline(fixed, moving, config)`` takes the US and the MR sequences of one case (on one
grid: the batch resamples a moving image onto the fixed grid first) and returns one
challenge-format field per group of sequences, the seconds each stage took and its notes.
Every stage returns a new typed result; the pipeline only passes them on and collects the
timings (:class:`StageClock`) and notes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.dataset import ImageName
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.base import MethodResult
from remind2reg.inference.stages.deformable import adam_estimates, convex_estimates, fuse, shrink, zero_fields
from remind2reg.inference.stages.embedding import embed_transforms
from remind2reg.inference.stages.features import WorkingCase, extract_features
from remind2reg.inference.stages.global_alignment import (
    align_globally,
    checked_fixed2moving,
    given_alignment,
    header_alignment,
)
from remind2reg.inference.stages.guard import guard
from remind2reg.inference.stages.refinement import refine_transforms
from remind2reg.inference.stages.sector import Sector, find_sector
from remind2reg.inference.stages.transforms import GroupTransform, sequence_groups

T = TypeVar("T")


class StageClock:
    """Runs stages and records the wall-clock seconds of each, in order (``seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, stage: Callable[..., T], *args, **kwargs) -> T:
        t0 = time.perf_counter()
        result = stage(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return result


def case_name(fixed: Image) -> str:
    """The case id of a ReMIND2Reg file name (for log lines), else the file name, else "?"."""
    if fixed.path is None:
        return "?"
    try:
        return ImageName.parse(fixed.path).case
    except InputError:
        return fixed.path.name


@dataclass(frozen=True)
class Proposal:
    """What the stages before the guard propose for one case (the guard's input)."""

    sector: Sector
    case: WorkingCase  # features of the US and of the MR as given (the guard judges on these)
    transforms: tuple[GroupTransform, ...]
    notes: dict[str, object]


def propose(
    fixed: Image,
    moving: Mapping[str, Image],
    cfg: RegistrationConfig,
    device: torch.device,
    clock: StageClock,
    sector_mask: NDArray[np.bool_] | None = None,
    init_fixed2moving: NDArray[np.float64] | None = None,
) -> Proposal:
    """The stages before the guard: sector, features, global stage (or the given transform),
    deformable (convex, Adam, fusion, shrink toward rigid), refinement."""
    case_id = case_name(fixed)
    sector = clock.run(
        "sector", find_sector, fixed, cfg.working_spacing_mm, cfg.crop_margin_mm, sector_mask, case_id
    )
    case = clock.run("features", extract_features, fixed, moving, sector, cfg.mind, device)
    groups = sequence_groups(tuple(moving), cfg.fusion)
    if init_fixed2moving is not None:
        aligned = clock.run(
            "affine", given_alignment, fixed, case, sector, groups, init_fixed2moving, cfg.mind
        )
    elif cfg.affine.method == "none":
        aligned = header_alignment(case, groups)
    else:
        aligned = clock.run(
            "affine", align_globally, fixed, moving, case, sector, groups, cfg.affine, cfg.mind
        )
    features, mask = aligned.case.features, case.images.mask
    if cfg.deformable:
        estimates = clock.run(
            "convex", convex_estimates, features, mask, aligned.alignments, cfg.fusion, cfg.convex
        )
        estimates = clock.run("adam", adam_estimates, features, mask, estimates, cfg.adam)
        transforms = fuse(aligned.alignments, estimates, cfg.fusion)
        if cfg.shrink.residual_weight < 1.0:
            working_vox2world = sector.grid.vox2world(fixed.vox2world)
            transforms = clock.run("shrink", shrink, transforms, mask, working_vox2world, cfg.shrink)
    else:
        transforms = zero_fields(aligned.alignments, sector.grid.shape, device)
    notes: dict[str, object] = {**sector.notes(), "fusion": cfg.fusion, **aligned.notes()}
    if cfg.refine.enabled:
        refined = clock.run("refine", refine_transforms, aligned.case.images, transforms, cfg.refine)
        transforms = refined.transforms
        notes.update(refined.notes())
    return Proposal(sector, case, transforms, notes)


def run_pipeline(
    fixed: Image,
    moving: Mapping[str, Image],
    config: RegistrationConfig | None = None,
    device: torch.device | str = "cpu",
    sector_mask: NDArray[np.bool_] | None = None,
    init_fixed2moving: NDArray[np.float64] | None = None,
) -> MethodResult:
    """Register the MR sequences ``moving`` (e.g. ``{"0001": ceT1, "0002": T2}``) to the US ``fixed``.

    ``sector_mask`` (full fixed grid) replaces the automatic US sector, e.g. to leave a region
    without correspondence out. ``init_fixed2moving`` (4x4, world mm:
    ``moving_world = init_fixed2moving @ fixed_world``) replaces the global stage, for every
    sequence: a rigid from another tool, for example. The deformable stage starts from it and
    the guard judges it as it judges a global stage's result (it may keep the input alignment
    instead); it needs ``[affine] method = "none"`` (ValueError otherwise, and for a matrix
    that is not a finite, invertible affine). The fields map fixed to moving in fixed voxels:
    ``warped(x) = moving(x + u(x))``.
    """
    cfg = config or RegistrationConfig()
    if init_fixed2moving is not None:
        init_fixed2moving = checked_fixed2moving(init_fixed2moving)
        if cfg.affine.method != "none":
            raise ValueError(
                f'init_fixed2moving replaces the global stage: it needs [affine] method = "none", '
                f"not {cfg.affine.method!r}"
            )
    clock = StageClock()
    proposal = propose(fixed, moving, cfg, torch.device(device), clock, sector_mask, init_fixed2moving)
    checked = clock.run(
        "guard", guard, proposal.case.images, proposal.transforms, cfg.guard, case=case_name(fixed)
    )
    notes = {**proposal.notes, **checked.notes()}
    fields = clock.run("embed", embed_transforms, checked.transforms, proposal.sector.grid, fixed.vox2world)
    return MethodResult(fields, clock.seconds, notes)
