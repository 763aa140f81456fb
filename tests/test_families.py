"""Simulator families: registry, determinism, ground truth, nearly aligned cases, standard set."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from remind2reg.evaluation.metrics import jacobian_determinant
from remind2reg.synthesis import labels as L
from remind2reg.synthesis import sources
from remind2reg.synthesis.calibration import resect_rigid_table
from remind2reg.synthesis.deformation import draw_rigid
from remind2reg.synthesis.families import (
    FAMILIES,
    PRE_RESECTION,
    REALISTIC_FAMILIES,
    RESECT_RIGID,
    CavitySettings,
    PostResectionShiftSettings,
    PreResectionSettings,
    RigidShiftSettings,
    SectorSettings,
    family_settings,
)
from remind2reg.synthesis.generate import CaseSpec, SynthConfig, generate_cases, generate_dataset
from remind2reg.synthesis.standard import LAYOUT, generate_standard_set, standard_specs
from remind2reg.synthesis.ultrasound_params import UltrasoundParams

GRID = 40  # 3.2 mm voxels: every step of the generator, seconds per case
NO_SHARED = Path("/nonexistent-shared-data")


def _generate(tmp: Path, family: str, seed: int) -> Path:
    generate_dataset(
        tmp, n_cases=1, seed=seed, config=SynthConfig(grid=GRID), shared_data=NO_SHARED, family=family
    )
    return tmp


def _arrays(root: Path) -> dict[str, np.ndarray]:
    """Every image, label map, field and landmark file of a dataset."""
    out = {}
    for path in sorted(root.rglob("*.nii.gz")):
        out[str(path.relative_to(root))] = np.asarray(nib.load(str(path)).dataobj)
    for path in sorted(root.rglob("*.csv")):
        out[str(path.relative_to(root))] = np.loadtxt(path, delimiter=",", ndmin=2)
    return out


@pytest.fixture(scope="module")
def family_cases(tmp_path_factory) -> dict[str, Path]:
    """One case per realistic family, seed 11, made once for the module."""
    return {f: _generate(tmp_path_factory.mktemp(f), f, 11) for f in REALISTIC_FAMILIES}


# --------------------------------------------------------------------------------------------
# Registry and settings
# --------------------------------------------------------------------------------------------


def test_registry_has_the_families_and_their_typed_settings():
    assert set(REALISTIC_FAMILIES) <= set(FAMILIES)
    assert set(FAMILIES) == {"pre-resection", "post-resection", "tissue-echo", "weak-contrast", "legacy"}
    for name in FAMILIES:
        settings = family_settings(name)
        assert settings.name == name
        with pytest.raises(FrozenInstanceError):
            settings.name = "other"  # type: ignore[misc]
    assert isinstance(family_settings(PRE_RESECTION), PreResectionSettings)
    assert family_settings("post-resection").cavity is not None
    assert all(family_settings(f).cavity is None for f in ("pre-resection", "tissue-echo", "weak-contrast"))
    codes = [family_settings(f).family_code for f in FAMILIES]
    assert len(set(codes)) == len(codes)
    with pytest.raises(ValueError, match="unknown family"):
        family_settings("box-cavity")


@pytest.mark.parametrize(
    "build",
    [
        lambda: SectorSettings(lateral_deg=(60.0, 30.0)),
        lambda: CavitySettings(rim_probability=1.5),
        lambda: RigidShiftSettings(nearly_aligned_share=-0.1),
        lambda: RigidShiftSettings(nearly_aligned_residual_mm=(0.5, 1.2), nearly_aligned_tre_mm=(1.0, 1.5)),
        lambda: PostResectionShiftSettings(initial_tre_clip_mm=(5.0, 2.0)),
        lambda: UltrasoundParams(gamma=(0.8, 0.2)),
        lambda: UltrasoundParams(echo=(1.0,) * 7),
        lambda: PreResectionSettings(near_field_gain=(3.0, 1.0)),
    ],
)
def test_settings_are_validated_when_built(build):
    with pytest.raises(ValueError):
        build()


def test_family_registry_imports_without_numpy_scipy_or_torch():
    code = (
        "import sys; import remind2reg.synthesis.families as f; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'scipy', 'torch')]; "
        "print(len(f.FAMILIES), bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5 []"


@pytest.mark.shared_data
def test_resect_rigid_table_is_what_the_tags_say(shared_data):
    measured = resect_rigid_table(shared_data / "resect_tags")
    assert [r[0] for r in measured] == [r[0] for r in RESECT_RIGID]
    np.testing.assert_allclose([r[1:] for r in measured], [r[1:] for r in RESECT_RIGID], atol=0.05)


def test_default_shared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("REMIND2REG_SHARED_DATA", str(tmp_path))
    assert sources.default_shared_data() == tmp_path
    monkeypatch.delenv("REMIND2REG_SHARED_DATA")
    checkout = Path(sources.__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():  # running from the source checkout
        assert sources.default_shared_data() == checkout.parent / "shared" / "data"
    installed = tmp_path / "site-packages" / "remind2reg" / "synthesis" / "sources.py"
    monkeypatch.setattr(sources, "__file__", str(installed))  # as if installed: no checkout
    assert sources.default_shared_data() is None


# --------------------------------------------------------------------------------------------
# Each family's cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", REALISTIC_FAMILIES)
def test_family_is_deterministic_per_seed(family, family_cases, tmp_path):
    first = _arrays(family_cases[family])
    again = _arrays(_generate(tmp_path / "same", family, 11))
    other = _arrays(_generate(tmp_path / "other", family, 12))
    assert first.keys() == again.keys()
    for key, value in first.items():
        assert np.array_equal(value, again[key]), key
    us = "imagesTr/ReMIND2Reg_0001_0000.nii.gz"
    assert not np.array_equal(first[us], other[us])
    record = json.loads((family_cases[family] / "groundtruth" / "case_0001.json").read_text())
    assert record["family"] == family


@pytest.mark.parametrize("family", REALISTIC_FAMILIES)
def test_ground_truth_is_fold_free_and_explains_the_fixed_anatomy(family, family_cases):
    gt = family_cases[family] / "groundtruth"
    disp = nib.load(str(gt / "disp_0001_0000_0001_0001.nii.gz")).get_fdata()
    assert jacobian_determinant(disp).min() > 0.0
    fixed = np.asarray(nib.load(str(gt / "labels_0001_0000.nii.gz")).dataobj)
    moving = np.asarray(nib.load(str(gt / "labels_0001_0001.nii.gz")).dataobj)
    us = np.asarray(nib.load(str(family_cases[family] / "imagesTr" / "ReMIND2Reg_0001_0000.nii.gz")).dataobj)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"), 0)
    warped = ndimage.map_coordinates(moving, grid + np.moveaxis(disp, -1, 0), order=0)
    keep = (us > 0) & (fixed != L.CAVITY)
    assert keep.sum() > 200
    assert (warped[keep] == fixed[keep]).mean() > 0.97
    has_cavity = (fixed == L.CAVITY).any()
    assert has_cavity == (family_settings(family).cavity is not None)


def test_post_resection_cavity_is_a_minority_of_the_sector(family_cases):
    root = family_cases["post-resection"]
    fixed = np.asarray(nib.load(str(root / "groundtruth" / "labels_0001_0000.nii.gz")).dataobj)
    us = np.asarray(nib.load(str(root / "imagesTr" / "ReMIND2Reg_0001_0000.nii.gz")).dataobj)
    share = ((fixed == L.CAVITY) & (us > 0)).sum() / (us > 0).sum()
    assert 0.0 < share <= family_settings("post-resection").cavity.max_sector_fraction + 0.02
    record = json.loads((root / "groundtruth" / "case_0001.json").read_text())
    assert set(record["extras"]["cavity_look"]) >= {"echogenic", "rim", "enhancement"}


# --------------------------------------------------------------------------------------------
# Nearly aligned cases
# --------------------------------------------------------------------------------------------


def test_nearly_aligned_share_is_the_documented_one():
    settings = family_settings(PRE_RESECTION).shift
    rng = np.random.default_rng(0)
    draws = [draw_rigid(settings, rng) for _ in range(2000)]
    share = np.mean([d.nearly_aligned for d in draws])
    assert share == pytest.approx(settings.nearly_aligned_share, abs=0.03)
    assert settings.nearly_aligned_share >= 0.2
    near = [d for d in draws if d.nearly_aligned]
    assert all(1.0 <= d.target_tre_mm <= 1.5 and d.residual_mm < d.target_tre_mm for d in near)
    rigid = [d for d in draws if not d.nearly_aligned]
    assert max(d.rotation_deg for d in rigid) > 10.0  # RESECT rotations reach 14 degrees


def test_a_nearly_aligned_case_starts_at_1_to_1_5_mm(tmp_path):
    spec = CaseSpec("0001", 3, "mni", PRE_RESECTION, nearly_aligned=True)
    (record,) = generate_cases(tmp_path, [spec], seed=5, config=SynthConfig(grid=48), shared=None)
    assert record.extras["nearly_aligned"] is True
    assert 1.0 <= record.initial_tre_mean_mm <= 1.5
    assert record.rigid_residual_mm < record.initial_tre_mean_mm


# --------------------------------------------------------------------------------------------
# Standard set
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_mri", [True, False])
@pytest.mark.parametrize("repeats", [1, 2])
def test_standard_set_split_has_both_halves_in_every_family(shared_mri, repeats):
    specs = standard_specs(shared_mri, repeats)
    assert len({s.case for s in specs}) == len(specs) == 18 * repeats
    assert len({s.index for s in specs}) == len(specs)  # every case its own random stream
    assert sum(2 if s.has_t2 else 1 for s in specs) == 31 * repeats
    for family in REALISTIC_FAMILIES:
        halves = {s.split for s in specs if s.family == family}
        assert halves == {"tuning", "held-out"}, family
    near = [s for s in specs if s.nearly_aligned]
    assert {s.split for s in near} == {"tuning", "held-out"} and {s.family for s in near} == {PRE_RESECTION}
    assert set(LAYOUT) == set(REALISTIC_FAMILIES)
    sources_used = {s.source for s in specs}
    assert sources_used == ({"mni", "shared"} if shared_mri else {"mni"})
    # no real subject is in both halves
    for subject in {s.subject for s in specs if s.subject}:
        assert len({s.split for s in specs if s.subject == subject}) == 1


def test_standard_set_first_repeat_is_the_one_repeat_set():
    """Earlier rounds' set (``--seed 0 --repeats 1``) stays reproducible inside larger sets."""
    assert standard_specs(True, 2)[:18] == standard_specs(True, 1)
    with pytest.raises(ValueError, match="repeats"):
        standard_specs(True, 0)


@pytest.mark.slow
def test_standard_set_end_to_end_small_grid(tmp_path):
    records = generate_standard_set(tmp_path, seed=0, shared_data=NO_SHARED, grid=32, repeats=1)
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["tuning"]) + len(split["held-out"]) == len(records) == 18
    for rec in records:
        meta = json.loads((tmp_path / "groundtruth" / f"case_{rec.case}.json").read_text())
        assert meta["family"] == split["cases"][rec.case]["family"] == rec.family
        assert meta["split"] == split["cases"][rec.case]["split"]
    dataset = json.loads((tmp_path / "ReMIND2Reg_dataset.json").read_text())
    assert dataset["numRegistration_val"] == sum(2 if r.has_t2 else 1 for r in records) >= 24


def test_several_families_are_given_to_the_cases_in_turn(tmp_path):
    """``synth --family A B`` (the demo's one case per family): case i gets family i mod 2."""
    records = generate_dataset(
        tmp_path,
        n_cases=3,
        seed=0,
        config=SynthConfig(grid=32, fov_mm=96.0),
        shared_data=NO_SHARED,
        family=["pre-resection", "weak-contrast"],
    )
    assert [r.family for r in records] == ["pre-resection", "weak-contrast", "pre-resection"]
    assert records[0].spacing_mm == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no-such-family"):
        generate_dataset(
            tmp_path / "x", 1, config=SynthConfig(grid=32), family=["pre-resection", "no-such-family"]
        )
