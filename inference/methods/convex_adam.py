"""MIND-SSC + multilevel coupled convex optimisation + Adam (the ConvexAdam / MCBO family).

Stages of one case (:meth:`ConvexAdamMethod.__call__`):

1. ``sector``: the US field of view (non-zero voxels, holes filled) and a crop box around it;
2. ``features``: images averaged down to the working grid inside the crop; MIND-SSC of the US
   (masked by the sector) and of each MR;
3. ``convex``: coarse-to-fine levels of dense correlation + coupled convex optimisation;
4. ``adam``: instance optimisation of a stationary velocity field (fold-free);
5. ``embed``: the working-grid field mapped back to the full fixed grid (challenge format),
   extended beyond the crop by its border values.

Working grid: working voxel ``w`` is the block of ``factor^3`` full voxels starting at
``lo + factor * w``, whose centre is full voxel ``lo + factor * w + (factor - 1) / 2``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage

from inference.config import RegistrationConfig
from inference.deformable.convex import cost_volume, coupled_convex, inverse_consistent, pool
from inference.deformable.fields import compose, identity_voxels, sample, upsample_cells, warp
from inference.deformable.guard import check_against_identity
from inference.deformable.instance import instance_optimise
from inference.errors import InputError
from inference.features.mind import mind_ssc
from inference.io.nifti import Image
from inference.methods.base import MethodResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkingGrid:
    """A crop of the full fixed grid, averaged by ``factor`` along each axis."""

    lo: tuple[int, int, int]  # first full voxel of the crop
    factor: int  # full voxels per working voxel
    shape: tuple[int, int, int]  # working grid shape
    full_shape: tuple[int, int, int]

    @property
    def hi(self) -> tuple[int, int, int]:
        return tuple(lo + self.factor * n for lo, n in zip(self.lo, self.shape, strict=True))  # type: ignore[return-value]

    def crop(self, array: NDArray) -> NDArray:
        """The crop of a full-grid array, zero-padded where the crop leaves the grid."""
        out = np.zeros(tuple(self.factor * n for n in self.shape), dtype=np.float32)
        src = tuple(
            slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(self.lo, self.hi, self.full_shape, strict=True)
        )
        dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, self.lo, strict=True))
        out[dst] = array[src]
        return out

    def to_working(self, array: NDArray, device: torch.device) -> torch.Tensor:
        """``(1, 1, *shape)`` tensor: the crop averaged over factor^3 blocks."""
        t = torch.from_numpy(self.crop(array))[None, None].to(device)
        return F.avg_pool3d(t, self.factor) if self.factor > 1 else t


def sector_mask(us: NDArray) -> NDArray[np.bool_]:
    """The US field of view: non-zero voxels, closed and hole-filled (speckle has zeros)."""
    mask = us > 0
    if not mask.any():
        return mask
    # Pad first: a closing treats the outside as background and would erode a sector that
    # touches the volume border.
    closed = ndimage.binary_closing(np.pad(mask, 2), iterations=2)[2:-2, 2:-2, 2:-2]
    return ndimage.binary_fill_holes(closed)


def working_grid(mask: NDArray[np.bool_], spacing_mm: float, config: RegistrationConfig) -> WorkingGrid:
    """Crop box around the sector (plus margin) on a grid of ``working_spacing_mm``."""
    factor = max(1, round(config.working_spacing_mm / spacing_mm))
    margin = round(config.crop_margin_mm / spacing_mm)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    shape = np.maximum(-(-(hi - lo) // factor), 8)  # at least 8 working voxels per side
    return WorkingGrid(tuple(int(v) for v in lo), factor, tuple(int(v) for v in shape), tuple(mask.shape))  # type: ignore[arg-type]


def embed(disp: torch.Tensor, grid: WorkingGrid, chunk: int = 16) -> NDArray[np.float32]:
    """The full-grid challenge field ``(I, J, K, 3)`` (full voxels) of a working field.

    Full voxel ``x`` reads the working field at ``w = (x - lo - (factor - 1) / 2) / factor``
    (trilinear, border-extended beyond the crop) and scales it by ``factor``. Computed in
    slabs along the first axis to bound memory.
    """
    full = grid.full_shape
    out = np.empty((*full, 3), dtype=np.float32)
    lo = torch.tensor(grid.lo, dtype=torch.float32, device=disp.device).view(1, 3, 1, 1, 1)
    offset = (grid.factor - 1) / 2.0
    for start in range(0, full[0], chunk):
        stop = min(start + chunk, full[0])
        coords = identity_voxels((stop - start, full[1], full[2]), disp.device).clone()
        coords[:, 0] += start
        w = (coords - lo - offset) / grid.factor
        values = sample(disp.float(), w) * grid.factor  # (1, 3, slab, J, K)
        out[start:stop] = values[0].permute(1, 2, 3, 0).cpu().numpy()  # channels last
    return out


@dataclass
class WorkingImages:
    """Everything on the working grid: images ``(1, 1, ...)``, sector mask, MIND features."""

    us: torch.Tensor
    mr: dict[str, torch.Tensor]
    mask: torch.Tensor
    us_features: torch.Tensor
    mr_features: dict[str, torch.Tensor]


class ConvexAdamMethod:
    """The deformable core; see the module docstring for its stages."""

    name = "convex-adam"

    def __init__(self, config: RegistrationConfig | None = None, device: str = "cpu"):
        self.config = config or RegistrationConfig()
        self.device = torch.device(device)
        self.feature_dtype = torch.float16 if self.device.type == "cuda" else torch.float32

    # -- stages ----------------------------------------------------------------------------

    def features(
        self, fixed: Image, moving: dict[str, Image], grid: WorkingGrid, mask: NDArray
    ) -> WorkingImages:
        """Working-grid images and their MIND-SSC features (the US features masked by the sector)."""
        cfg = self.config.mind
        us = grid.to_working(fixed.array, self.device)
        mask_w = (grid.to_working(mask.astype(np.float32), self.device) > 0.5).float()
        mr = {mod: grid.to_working(img.array, self.device) for mod, img in moving.items()}
        fixed_feat = mind_ssc(
            us, cfg.radius, cfg.dilation, mask_w if cfg.use_sector_mask else None, self.feature_dtype
        )
        moving_feat = {
            mod: mind_ssc(a, cfg.radius, cfg.dilation, None, self.feature_dtype) for mod, a in mr.items()
        }
        return WorkingImages(us, mr, mask_w, fixed_feat, moving_feat)

    def convex(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Coarse-to-fine coupled convex levels; returns a working-grid field ``(1, 3, ...)``."""
        cfg = self.config.convex
        shape = tuple(fixed.shape[-3:])
        disp = torch.zeros((1, 3, *shape), device=fixed.device)
        totals, weights = [], []
        for level in cfg.levels:
            fixed_c, weight = pool(fixed, mask, level.grid_sp)
            moving_c, _ = pool(warp(moving.float(), disp), None, level.grid_sp)
            cost = cost_volume(fixed_c, moving_c, level.disp_hw, weight)
            residual_c = coupled_convex(cost, level.disp_hw, cfg.coefficients, cfg.average_iterates)
            if cfg.inverse_consistent:
                backward = coupled_convex(
                    cost_volume(moving_c, fixed_c, level.disp_hw, weight),
                    level.disp_hw,
                    cfg.coefficients,
                    cfg.average_iterates,
                )
                residual_c = inverse_consistent(residual_c, backward, cfg.inverse_iterations)
            residual = upsample_cells(residual_c, level.grid_sp, shape)
            disp = compose(residual, disp)  # x -> x + r(x) -> moving via the previous field
            totals.append(disp)
            weights.append(level.weight)
        if cfg.combine == "weighted":
            w = torch.tensor(weights, device=disp.device)
            return (torch.stack(totals) * (w / w.sum()).view(-1, 1, 1, 1, 1, 1)).sum(0)
        return disp

    def register_features(
        self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, stages: dict
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        disp = self.convex(fixed, moving, mask)
        t1 = time.perf_counter()
        if self.config.adam.iterations > 0:
            disp, _ = instance_optimise(fixed, moving, disp, mask, self.config.adam)
        stages["convex"] = stages.get("convex", 0.0) + t1 - t0
        stages["adam"] = stages.get("adam", 0.0) + time.perf_counter() - t1
        return disp

    # -- a case ----------------------------------------------------------------------------

    def __call__(self, fixed: Image, moving: dict[str, Image]) -> MethodResult:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        mask = sector_mask(fixed.array)
        if mask.sum() < 1000:
            raise InputError("the ultrasound has (almost) no non-zero sector", path=fixed.path)
        spacing = float(np.mean(fixed.spacing))
        grid = working_grid(mask, spacing, self.config)
        log.debug("Working grid %s (factor %d) from %s", grid.shape, grid.factor, grid.lo)
        stages["sector"] = time.perf_counter() - t

        t = time.perf_counter()
        with torch.no_grad():
            images = self.features(fixed, moving, grid, mask)
        fixed_feat, moving_feat, mask_w = images.us_features, images.mr_features, images.mask
        stages["features"] = time.perf_counter() - t

        fusion = self.config.fusion if len(moving) > 1 else "none"
        if fusion == "joint":
            mods = list(moving_feat)
            joint_moving = torch.cat([moving_feat[m] for m in mods], 1)
            joint_fixed = fixed_feat.repeat(1, len(mods), 1, 1, 1)
            disp = self.register_features(joint_fixed, joint_moving, mask_w, stages)
            working = dict.fromkeys(mods, disp)
        else:
            working = {
                m: self.register_features(fixed_feat, f, mask_w, stages) for m, f in moving_feat.items()
            }
            if fusion in ("mean", "max"):
                stacked = torch.stack(list(working.values()))
                fused = stacked.mean(0) if fusion == "mean" else stacked.max(0).values
                working = dict.fromkeys(working, fused)

        t = time.perf_counter()
        notes: dict[str, object] = {"working_shape": grid.shape, "fusion": fusion}
        if self.config.guard:
            working = self.guard(images, working, notes, case=fixed.path.name if fixed.path else "?")
        stages["guard"] = time.perf_counter() - t

        t = time.perf_counter()
        cache: dict[int, NDArray[np.float32]] = {}
        fields = {}
        for mod, disp in working.items():
            if id(disp) not in cache:
                cache[id(disp)] = embed(disp, grid)
            fields[mod] = cache[id(disp)]
        stages["embed"] = time.perf_counter() - t
        return MethodResult(fields=fields, stages=stages, notes=notes)

    def guard(self, images: WorkingImages, working: dict, notes: dict, case: str = "?") -> dict:
        """Keep the input alignment for any field that does not raise the US/MR NMI.

        With a shared (fused) field, the NMI gains of all moving images are summed.
        """
        gains: dict[int, float] = {}
        for mod, disp in working.items():
            before, after = check_against_identity(images.us, images.mr[mod], images.mask, disp)
            notes[f"nmi_{mod}"] = (before, after)
            gains[id(disp)] = gains.get(id(disp), 0.0) + (after - before)
        out = {}
        for mod, disp in working.items():
            if gains[id(disp)] <= 0:
                log.warning(
                    "Case %s: registering %s did not raise the NMI with the ultrasound (%.4f -> %.4f); keeping the input alignment",
                    case,
                    mod,
                    *notes[f"nmi_{mod}"],
                )
                notes[f"fallback_{mod}"] = True
                out[mod] = torch.zeros_like(disp)
            else:
                out[mod] = disp
        return out
