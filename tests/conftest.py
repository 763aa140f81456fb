"""Shared fixtures: oblique grids and tiny ReMIND2Reg folders made on the fly."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REMIND2REG_SHARED_DATA", REPO.parent / "shared" / "data"))


def oblique_vox2world(spacing=(0.7, 0.5, 0.9), angles_deg=(17.0, -23.0, 31.0), origin=(-40.0, 12.5, 88.0)):
    """A vox2world with anisotropic spacing and an oblique, non-axis-aligned rotation."""
    rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    out = np.eye(4)
    out[:3, :3] = rot @ np.diag(spacing)
    out[:3, 3] = origin
    return out


def smooth_deformation_pair(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(moving, truth, warped)``: a smooth random image, a known field in voxels along the array
    axes (5 and 2 voxels along axes 0 and 2, a -3 +- 2 voxel bend along axis 1 that varies along
    axis 0) and ``warped(x) = moving(x + truth(x))`` (trilinear, edges replicated)."""
    rng = np.random.default_rng(0)
    moving = ndimage.gaussian_filter(rng.normal(size=shape), 3.0).astype(np.float32)
    i = np.arange(shape[0], dtype=np.float32)[:, None, None]
    truth = np.zeros((*shape, 3), dtype=np.float32)
    truth[..., 0] = 5.0
    truth[..., 1] = -3.0 + 2.0 * np.sin(np.pi * i / shape[0])  # varies along axis 0
    truth[..., 2] = 2.0
    coords = np.indices(shape, dtype=np.float32) + np.moveaxis(truth, -1, 0)
    warped = ndimage.map_coordinates(moving, coords, order=1, mode="nearest").astype(np.float32)
    return moving, truth, warped


def voxel_grid(shape) -> np.ndarray:
    """Voxel coordinates of every voxel, shape ``(I, J, K, 3)``: ``grid[i, j, k] = (i, j, k)``."""
    return np.stack(np.indices(shape, dtype=np.float32), axis=-1)


@pytest.fixture
def oblique_grid():
    """(shape, vox2world): a non-cubic shape on an oblique, anisotropic grid."""
    return (23, 31, 19), oblique_vox2world()


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loader of a script of ``benchmarks/`` by name, e.g. ``benchmark_script("guard_calibration")``."""
    return load_benchmark_script


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set REMIND2REG_SHARED_DATA)")
    return SHARED_DATA


def make_case_files(
    root: Path, case: str, shape, vox2world, modalities=("0000", "0001", "0002"), layout="imagesTr"
):
    """Write small random images for one case; returns their paths by modality."""
    from remind2reg.inference.io.nifti import write_image

    folder = root / layout if layout else root
    rng = np.random.default_rng(int(case))
    paths = {}
    for mod in modalities:
        path = folder / f"ReMIND2Reg_{case}_{mod}.nii.gz"
        write_image(path, rng.random(shape).astype(np.float32), vox2world)
        paths[mod] = path
    return paths


def sitk_image(array: np.ndarray, vox2world: np.ndarray):
    """A SimpleITK image of our ``array[i, j, k]`` on the RAS+ grid ``vox2world`` (the inverse of
    :func:`remind2reg.inference.io.convert.as_image`): axes reversed to SimpleITK's ``[k, j, i]``,
    geometry in LPS+ (:func:`~remind2reg.inference.io.convert.sitk_geometry`)."""
    import SimpleITK as sitk

    from remind2reg.inference.io.convert import sitk_geometry

    spacing, direction, origin = sitk_geometry(vox2world)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # [i,j,k] -> [k,j,i]
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image
