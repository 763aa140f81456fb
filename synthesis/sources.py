"""Pre-operative brains for the simulator: T1 (ceT1-like), T2 and a tissue label map.

Two sources:

* ``mni``: the MNI152 2009a template and its GM/WM probability maps, which ship inside the
  nilearn wheel (works on a fresh clone). A T2-like image is derived from the tissue
  probabilities, since none ships; a tumour is inserted per case by :func:`insert_tumour`.
* ``shared``: the real glioma / metastasis MRI (ceT1 + T2) in ``../shared/data/mri``; tissues
  come from an intensity classification and the tumour from the enhancing lesion.

All arrays are on the source's own 1 mm grid, ``world = vox2world @ [i, j, k, 1]``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from remind2reg.inference.errors import Remind2RegError
from remind2reg.inference.geometry import apply_affine
from remind2reg.synthesis import labels as L

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedSubject:
    """A real MRI pair in ``shared/data/mri`` and an approximate lesion centre.

    ``lesion_seed_vox`` (voxels of the 1 mm source grid) was read off the images by eye, as a
    dataset ROI would be: intensity alone cannot tell a cystic lesion from the ventricles.
    """

    t1: str
    t2: str
    lesion_seed_vox: tuple[int, int, int]


SHARED_SUBJECTS = {
    "BraTS-GLI-00001-000": SharedSubject(
        "BraTS-GLI-00001-000-t1c.nii.gz", "BraTS-GLI-00001-000-t2w.nii.gz", (170, 102, 67)
    ),
    "AURORA": SharedSubject("AURORA-t1c.nii.gz", "AURORA-t2.nii.gz", (90, 65, 72)),
}
MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class SourceBrain:
    """A pre-operative brain on its source grid (float32 images scaled to about [0, 1000])."""

    name: str
    t1: NDArray[np.float32]
    t2: NDArray[np.float32]
    labels: NDArray[np.uint8]
    vox2world: NDArray[np.float64]


SHARED_DATA_ENV = "REMIND2REG_SHARED_DATA"


def default_shared_data() -> Path | None:
    """The shared data folder: ``$REMIND2REG_SHARED_DATA`` if set; else ``shared/data`` beside
    the source checkout when the package runs from one (recognised by the ``pyproject.toml``
    in the folder that holds ``synthesis/``); else None (an installed package has no
    checkout beside it: pass the folder explicitly where shared data is required)."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout.parent / "shared" / "data"
    return None


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise Remind2RegError("the MNI source needs the 'nilearn' package: pip install 'remind2reg[synth]'")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _scale(image: NDArray, mask: NDArray, reference: float = 600.0) -> NDArray[np.float32]:
    """Scale intensities so that the median inside ``mask`` is ``reference``."""
    med = float(np.median(image[mask])) if mask.any() else 1.0
    return (image * (reference / max(med, 1e-6))).astype(np.float32)


def _deep_csf(csf: NDArray[np.bool_], brain: NDArray[np.bool_], depth_mm: float) -> NDArray[np.bool_]:
    """CSF deeper than ``depth_mm`` below the brain surface: ventricles (1 mm grid)."""
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=4))
    depth = ndimage.distance_transform_edt(filled)
    deep = csf & (depth > depth_mm)
    # Keep the big connected pieces: ventricles, not deep sulci fragments.
    lab, n = ndimage.label(deep)
    if n == 0:
        return deep
    sizes = ndimage.sum_labels(deep, lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= 200) + 1
    return np.isin(lab, keep)


def _falx(labels: NDArray[np.uint8], vox2world: NDArray, midline_x_mm: float) -> NDArray[np.bool_]:
    """CSF voxels within 1 mm of the midline plane: the falx in the interhemispheric fissure."""
    i = np.arange(labels.shape[0], dtype=np.float64)
    # world x of voxel i along the first axis (the sources here are axis-aligned RAS/LPS grids).
    x = vox2world[0, 0] * i + vox2world[0, 3]
    near = np.abs(x - midline_x_mm) <= 1.0
    return (labels == L.CSF) & near[:, None, None]


def load_mni() -> SourceBrain:
    """The MNI152 2009a template with labels and a derived T2-like image (no tumour yet)."""
    folder = _nilearn_data_dir()
    imgs = {k: nib.load(str(folder / f)) for k, f in MNI_FILES.items()}
    vox2world = np.asarray(imgs["t1"].affine, dtype=np.float64)
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0
    tissue = gm + wm
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue > 0.1, iterations=2))
    brain = ndimage.binary_dilation(brain, iterations=1)
    labels = np.zeros(t1.shape, dtype=np.uint8)
    labels[brain] = L.CSF
    labels[brain & (gm > 0.35)] = L.GREY_MATTER
    labels[brain & (wm > 0.5) & (wm >= gm)] = L.WHITE_MATTER
    csf = labels == L.CSF
    labels[_deep_csf(csf, brain, depth_mm=14.0)] = L.VENTRICLE
    labels[_falx(labels, vox2world, 0.0)] = L.FALX
    # T2-like contrast from tissue fractions: CSF bright, GM > WM; outside the brain a dim
    # version of the T1 (scalp, fat and bone look different in T2, but the US never sees them).
    csf_frac = np.clip(1.0 - tissue, 0.0, 1.0) * brain
    t2 = 1.0 * csf_frac + 0.55 * gm + 0.38 * wm
    t2 = np.where(brain, t2, 0.25 * t1 / max(float(t1.max()), 1.0))
    t2 = ndimage.gaussian_filter(t2, 0.6)
    return SourceBrain(
        name="MNI152",
        t1=_scale(t1, labels == L.WHITE_MATTER),
        t2=_scale(t2, labels == L.WHITE_MATTER, reference=300.0),
        labels=labels,
        vox2world=vox2world,
    )


def load_shared(data_dir: str | Path, subject: str) -> SourceBrain:
    """A real pre-operative ceT1 + T2 pair from ``data_dir/mri`` with estimated labels.

    Tissue classes come from three intensity classes of the ceT1 inside the brain; the tumour
    is the abnormal region (T2-bright or enhancing) connected to the subject's lesion seed.
    """
    meta = SHARED_SUBJECTS[subject]
    folder = Path(data_dir) / "mri"
    img1 = nib.load(str(folder / meta.t1))
    vox2world = np.asarray(img1.affine, dtype=np.float64)
    t1 = np.asarray(img1.dataobj, dtype=np.float32)
    t2 = np.asarray(nib.load(str(folder / meta.t2)).dataobj, dtype=np.float32)
    brain = ndimage.binary_fill_holes((t1 > 0) | (t2 > 0))
    tumour = lesion_from_seed(t1, t2, brain, meta.lesion_seed_vox)
    classes = _three_classes(t1, brain & ~tumour)
    labels = np.zeros(t1.shape, dtype=np.uint8)
    labels[brain] = classes[brain]
    labels[tumour] = L.TUMOUR
    labels[_deep_csf(labels == L.CSF, brain, depth_mm=14.0)] = L.VENTRICLE
    centre = apply_affine(vox2world, np.argwhere(brain).mean(axis=0)[None])[0]
    labels[_falx(labels, vox2world, float(centre[0]))] = L.FALX
    wm = labels == L.WHITE_MATTER
    return SourceBrain(
        name=subject,
        t1=_scale(t1, wm),
        t2=_scale(t2, wm, reference=300.0),
        labels=labels,
        vox2world=vox2world,
    )


def _three_classes(t1: NDArray, mask: NDArray[np.bool_], iterations: int = 20) -> NDArray[np.uint8]:
    """CSF / GM / WM by 1D k-means on the ceT1 intensities inside ``mask``."""
    values = t1[mask]
    centres = np.percentile(values, [10, 50, 85]).astype(np.float64)
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array(
            [values[assign == c].mean() if (assign == c).any() else centres[c] for c in range(3)]
        )
    assign = np.argmin(np.abs(t1[..., None] - centres), axis=-1)
    codes = np.array([L.CSF, L.GREY_MATTER, L.WHITE_MATTER], dtype=np.uint8)
    return codes[assign]


def lesion_from_seed(
    t1: NDArray,
    t2: NDArray,
    brain: NDArray[np.bool_],
    seed_vox: tuple[int, int, int],
    radius_vox: float = 30.0,
) -> NDArray[np.bool_]:
    """The lesion around ``seed_vox``: T2-bright (>90th percentile) or enhancing (>97th
    percentile of the ceT1) voxels within ``radius_vox``, closed, hole-filled and opened; the
    connected piece that contains the seed, or the nearest one."""
    lo = np.maximum(np.asarray(seed_vox) - int(radius_vox), 0)
    hi = np.minimum(np.asarray(seed_vox) + int(radius_vox) + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
    near = np.linalg.norm(grid - np.asarray(seed_vox), axis=-1) < radius_vox
    abnormal = (t2[box] > np.percentile(t2[brain], 90)) | (t1[box] > np.percentile(t1[brain], 97))
    abnormal &= brain[box] & near
    abnormal = ndimage.binary_opening(
        ndimage.binary_fill_holes(ndimage.binary_closing(abnormal, iterations=2)), iterations=2
    )
    lab, n = ndimage.label(abnormal)
    if n == 0:
        raise ValueError(f"no lesion found near voxel {seed_vox}")
    local_seed = tuple(np.asarray(seed_vox) - lo)
    if lab[local_seed] == 0:
        nearest = ndimage.distance_transform_edt(lab == 0, return_indices=True)[1]
        local_seed = tuple(nearest[(slice(None), *local_seed)])
    lesion = np.zeros(brain.shape, dtype=bool)
    lesion[box] = lab == lab[local_seed]
    return lesion


def insert_tumour(
    brain: SourceBrain, centre_vox: NDArray, radius_mm: float, rng: np.random.Generator, enhancing: bool
) -> SourceBrain:
    """A copy of ``brain`` with a tumour blob at ``centre_vox`` (source voxels, 1 mm grid).

    The blob is a sphere roughened by smooth noise. Enhancing (high-grade-like): bright rim and
    dark necrotic core in ceT1; otherwise (low-grade-like): mildly hypointense in ceT1.
    Both are T2-hyperintense. Labels inside become TUMOUR.
    """
    half = int(np.ceil(radius_mm * 1.6)) + 2
    lo = np.maximum(np.round(centre_vox).astype(int) - half, 0)
    hi = np.minimum(np.round(centre_vox).astype(int) + half + 1, brain.labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
    dist = np.linalg.norm(grid - np.asarray(centre_vox), axis=-1)
    noise = ndimage.gaussian_filter(rng.standard_normal(dist.shape), 3.0)
    noise /= max(float(noise.std()), 1e-6)
    level = dist / radius_mm + 0.15 * noise
    inside = (level < 1.0) & (brain.labels[box] != L.BACKGROUND)
    rim = inside & (level > 0.75)

    t1, t2, labels = brain.t1.copy(), brain.t2.copy(), brain.labels.copy()
    wm_level = float(np.median(brain.t1[brain.labels == L.WHITE_MATTER]))
    t2_csf = (
        float(np.median(brain.t2[brain.labels == L.VENTRICLE]))
        if (brain.labels == L.VENTRICLE).any()
        else 900.0
    )
    t1_box, t2_box = t1[box], t2[box]
    if enhancing:
        t1_box[inside] = 0.45 * wm_level
        t1_box[rim] = 1.35 * wm_level
    else:
        t1_box[inside] = 0.7 * wm_level
    t2_box[inside] = 0.85 * t2_csf
    t2_box[rim] = 0.7 * t2_csf
    texture = 1.0 + 0.05 * ndimage.gaussian_filter(rng.standard_normal(dist.shape), 1.0)
    t1_box[inside] *= texture[inside]
    t2_box[inside] *= texture[inside]
    labels[box][inside] = L.TUMOUR
    return replace(brain, t1=t1, t2=t2, labels=labels)
