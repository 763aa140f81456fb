"""Stage 2, features: the images on the working grid and their MIND-SSC descriptors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from remind2reg.inference.core.mind import mind_ssc
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.settings import MindSettings
from remind2reg.inference.stages.sector import Sector


@dataclass(frozen=True)
class WorkingImages:
    """Images ``(1, 1, I, J, K)`` on the working grid: the US, its sector mask (0/1), the MR by sequence."""

    us: torch.Tensor
    mask: torch.Tensor
    mr: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Features:
    """MIND-SSC features ``(1, 12, I, J, K)``: of the US (masked by the sector) and of each MR."""

    us: torch.Tensor
    mr: Mapping[str, torch.Tensor]

    def joint(self, mods: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(US, MR)`` features for one cost over several sequences: the MR features of
        ``mods`` concatenated along channels, the US features repeated to match."""
        moving = torch.cat([self.mr[m] for m in mods], 1)
        return self.us.repeat(1, len(mods), 1, 1, 1), moving


@dataclass(frozen=True)
class WorkingCase:
    images: WorkingImages
    features: Features


def feature_dtype(device: torch.device) -> torch.dtype:
    """Storage type of the features: float16 on a GPU (memory), float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def mr_features(
    mr: Mapping[str, torch.Tensor], settings: MindSettings, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """MIND-SSC of each MR image (unmasked: the MR fills the grid)."""
    return {mod: mind_ssc(a, settings.radius, settings.dilation, None, dtype) for mod, a in mr.items()}


@torch.no_grad()
def extract_features(
    fixed: Image, moving: Mapping[str, Image], sector: Sector, settings: MindSettings, device: torch.device
) -> WorkingCase:
    """Average the US, the sector and each MR down to the working grid; compute their features."""
    grid = sector.grid
    us = grid.to_working(fixed.array, device)
    mask = (grid.to_working(sector.mask.astype(np.float32), device) > 0.5).float()
    mr = {mod: grid.to_working(img.array, device) for mod, img in moving.items()}
    dtype = feature_dtype(device)
    us_features = mind_ssc(
        us, settings.radius, settings.dilation, mask if settings.use_sector_mask else None, dtype
    )
    return WorkingCase(WorkingImages(us, mask, mr), Features(us_features, mr_features(mr, settings, dtype)))
