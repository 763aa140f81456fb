"""Tests of the iUS renderer (synthesis/ultrasound.py) on small synthetic label maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage, stats

from remind2reg.synthesis import labels as L
from remind2reg.synthesis.appearance import CavityLook, apply_cavity_look
from remind2reg.synthesis.calibration import posterior_enhancement_ratio
from remind2reg.synthesis.families import family_settings
from remind2reg.synthesis.ultrasound import (
    SECTOR_RANGES,
    Sector,
    UltrasoundParams,
    beam_depth_mm,
    compress,
    random_sector,
    reflectivity_map,
    render_ultrasound,
    sector_bbox,
    sector_mask,
    sheet_lines,
    vessel_segments,
)

N = 64
SP = 0.5
# beam along +i; the first imaged voxel is at i = 10, the far cap at i = 60 on the axis
SECTOR = Sector(
    apex_vox=(-10.0, 32.0, 32.0), axis=(1.0, 0.0, 0.0), depth_mm=35.0,
    opening_deg=(60.0, 40.0), near_mm=10.0,
)  # fmt: skip
T1_OF = {L.BACKGROUND: 0.0, L.CSF: 0.15, L.GREY_MATTER: 0.6, L.WHITE_MATTER: 0.85,
         L.VENTRICLE: 0.15, L.TUMOUR: 0.5, L.CAVITY: 0.1, L.FALX: 0.4}  # fmt: skip


def _ball(centre: tuple[float, float, float], radius_vox: float) -> np.ndarray:
    ii, jj, kk = np.meshgrid(*(np.arange(N),) * 3, indexing="ij", sparse=True)
    c = centre
    return (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2 <= radius_vox**2


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """WM block, GM layer on top, a thin sulcus, a falx sheet across the beam, cavity, tumour."""
    lab = np.full((N,) * 3, L.WHITE_MATTER, dtype=np.uint8)
    lab[:18] = L.GREY_MATTER
    lab[10:18, 20:22, :] = L.CSF  # thin sulcus (1 mm) along the beam
    lab[52:54, 10:54, 10:54] = L.FALX  # sheet perpendicular to the beam
    lab[_ball((32, 40, 32), 7)] = L.CAVITY
    lab[_ball((30, 18, 42), 5)] = L.TUMOUR
    t1 = np.vectorize(T1_OF.get, otypes=[np.float32])(lab)
    t1 += np.random.default_rng(1).normal(0, 0.02, lab.shape).astype(np.float32)
    return lab, t1


@pytest.fixture(scope="module")
def rendered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lab, t1 = phantom()
    return lab, t1, render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0))


def test_output_shape_dtype_and_zero_outside_sector(rendered):
    lab, _, us = rendered
    mask = sector_mask(lab.shape, SP, SECTOR)
    assert us.shape == lab.shape and us.dtype == np.float32
    assert 0.2 < mask.mean() < 0.9
    assert np.all(us[~mask] == 0)
    assert np.mean(us[mask] > 0) > 0.99
    assert 0 <= us.min() and us.max() <= UltrasoundParams().out_max


def test_sector_mask_geometry():
    mask = sector_mask((N, N, N), SP, SECTOR)
    a, u1, u2 = SECTOR.frame()
    apex = np.asarray(SECTOR.apex_vox)

    def inside(r_mm, lat_deg=0.0, elev_deg=0.0) -> bool:
        d = a + np.tan(np.radians(lat_deg)) * u1 + np.tan(np.radians(elev_deg)) * u2
        p = np.round(apex + r_mm / SP * d / np.linalg.norm(d)).astype(int)
        return bool(mask[tuple(p)])

    assert inside(11.0) and inside(34.0)
    assert not inside(8.0)  # dead zone near the apex
    assert not inside(35.6)  # beyond the depth
    assert inside(20.0, lat_deg=27.0) and not inside(20.0, lat_deg=33.0)
    assert inside(20.0, elev_deg=17.0) and not inside(20.0, elev_deg=23.0)
    # lateral width grows with depth as 2 r tan(opening / 2)
    for r_mm in (15.0, 22.0):
        plane = np.round(apex[0] + r_mm / SP).astype(int)
        rows = mask[plane]
        widths = [np.ptp(np.nonzero(rows.any(axis=ax))[0]) + 1 for ax in (1, 0)]
        # row widths (voxels) along the two lateral array axes (j, k); compare with theory
        expect = sorted(2 * r_mm * np.tan(np.radians(np.asarray(SECTOR.opening_deg) / 2)) / SP)
        assert np.allclose(sorted(widths), expect, atol=3)


def test_beam_depth_is_distance_from_apex():
    depth = beam_depth_mm((N, N, N), SP, SECTOR)
    assert depth.dtype == np.float32
    assert depth[10, 32, 32] == pytest.approx(10.0, abs=1e-4)
    assert depth[40, 32 + 15, 32] == pytest.approx(SP * np.hypot(50, 15), abs=1e-4)


def test_bbox_contains_sector():
    bbox = sector_bbox((N, N, N), SP, SECTOR)
    full = sector_mask((N, N, N), SP, SECTOR)
    inner = np.zeros_like(full)
    inner[bbox] = full[bbox]
    assert np.array_equal(inner, full)


def test_random_sector_ranges():
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = random_sector((1.0, 2.0, 3.0), (0.0, 0.0, 1.0), rng)
        lo, hi = SECTOR_RANGES["near_mm"]
        assert lo <= s.near_mm <= hi
        lo, hi = SECTOR_RANGES["imaged_depth_mm"]
        assert lo <= s.depth_mm - s.near_mm <= hi
        assert SECTOR_RANGES["lateral_deg"][0] <= s.opening_deg[0] <= SECTOR_RANGES["lateral_deg"][1]
    assert isinstance(Sector.random((0, 0, 0), (1, 0, 0), rng), Sector)


def test_deterministic_for_seed():
    lab, t1 = phantom()
    a = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(5))
    b = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(5))
    c = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _region_means(lab, us):
    mask = sector_mask(lab.shape, SP, SECTOR)
    cav = ndimage.binary_erosion(lab == L.CAVITY, iterations=2) & mask
    rim = ndimage.binary_dilation(lab == L.CAVITY, iterations=2) & (lab != L.CAVITY) & mask
    wm = (lab == L.WHITE_MATTER) & mask
    wm &= ~ndimage.binary_dilation(lab != L.WHITE_MATTER, iterations=3)
    return us[cav].mean(), us[rim].mean(), np.median(us[wm])


def test_cavity_dark_rim_bright(rendered):
    lab, _, us = rendered
    cav, rim, wm = _region_means(lab, us)
    assert cav < 0.5 * wm
    assert rim > 1.3 * wm


def test_shadow_behind_strong_reflector():
    """The falx (strong reflector) darkens the tissue behind it, compared with no shadowing."""
    lab, t1 = phantom()
    base = replace(UltrasoundParams(), hetero_amp=0.0)
    no_shadow = replace(base, shadow_strength=0.0)
    a = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0), base)
    b = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0), no_shadow)
    assert a[56:61, 20:44, 20:44].mean() < 0.9 * b[56:61, 20:44, 20:44].mean()


def test_falx_and_tumour_hyperechoic(rendered):
    lab, _, us = rendered
    mask = sector_mask(lab.shape, SP, SECTOR)
    _, _, wm = _region_means(lab, us)
    assert us[(lab == L.FALX) & mask].mean() > 2.0 * wm
    assert us[(lab == L.TUMOUR) & mask].mean() > 1.2 * wm


def test_interface_brightness_depends_on_beam_angle():
    """A boundary facing the beam reflects; the same boundary along the beam does not."""
    lab = np.full((N,) * 3, L.WHITE_MATTER, dtype=np.uint8)
    facing = lab.copy()
    facing[30:] = L.TUMOUR  # normal along i, the beam axis
    grazing = lab.copy()
    grazing[:, 32:] = L.TUMOUR  # normal along j, across the beam on the axis
    bbox = tuple(slice(0, N) for _ in range(3))
    p = UltrasoundParams()
    r_face = reflectivity_map(facing, SP, SECTOR, bbox, p)[28:33, 30:35, 30:35].max()
    r_graze = reflectivity_map(grazing, SP, SECTOR, bbox, p)[20:40, 30:35, 30:35].max()
    assert r_face > 0.05
    assert r_graze < 0.1 * r_face


def test_posterior_enhancement_behind_cavity():
    """Fluid attenuates less than brain: what lies behind the cavity is brighter."""
    lab, t1 = phantom()
    params = replace(UltrasoundParams(), hetero_amp=0.0)  # isolate the beam effect
    us = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0), params)
    behind = us[42:49, 38:43, 30:35]  # deeper than the cavity along the beam
    beside = us[42:49, 25:30, 22:27]  # same depth, beside the cavity, not behind anything
    assert behind.mean() > 1.2 * beside.mean()


def test_not_a_monotone_function_of_t1(rendered):
    lab, t1, us = rendered
    mask = sector_mask(lab.shape, SP, SECTOR)
    # the labels have a clear T1 ordering ...
    assert T1_OF[L.CSF] < T1_OF[L.GREY_MATTER] < T1_OF[L.WHITE_MATTER]
    label_t1 = np.vectorize(T1_OF.get, otypes=[np.float64])(lab[mask])
    assert np.corrcoef(t1[mask], label_t1)[0, 1] > 0.9
    # ... but the ultrasound does not follow it
    rho = stats.spearmanr(t1[mask], us[mask])[0]
    assert abs(rho) < 0.5
    # and a monotone re-mapping of the T1 would be caught by the same measure
    assert stats.spearmanr(t1[mask], np.sqrt(np.maximum(t1[mask], 0)))[0] > 0.99


def test_empty_when_sector_misses_grid():
    lab, t1 = phantom()
    far = Sector((500.0, 500.0, 500.0), (1.0, 0.0, 0.0), 40.0, (60.0, 40.0), 10.0)
    out = render_ultrasound(lab, t1, SP, far, np.random.default_rng(0))
    assert not out.any()


# --------------------------------------------------------------------------------------------
# Realism features of the families (off in the legacy defaults)
# --------------------------------------------------------------------------------------------

REAL = family_settings("pre-resection").ultrasound


def test_legacy_defaults_leave_the_realism_features_off():
    p = UltrasoundParams()
    assert p.line_echo == 0 and p.vessel_density_per_ml == 0 and p.t1_echo_mix == 0
    assert not p.edge_partial_volume and p.saturation_ratio is None and p.rim_coverage == 1.0
    assert REAL.line_echo > 0 and REAL.edge_partial_volume and REAL.saturation_ratio is not None


def _slab_phantom(width_vox: int) -> tuple[np.ndarray, np.ndarray]:
    """White matter with a CSF slab ``width_vox`` thick across j (a sulcus), centre j = 32."""
    lab = np.full((N,) * 3, L.WHITE_MATTER, dtype=np.uint8)
    lo = 32 - width_vox // 2
    lab[:, lo : lo + width_vox, :] = L.CSF
    t1 = np.vectorize(T1_OF.get, otypes=[np.float32])(lab)
    return lab, ndimage.gaussian_filter(t1, 1.0)  # the MR's own blur


@pytest.mark.parametrize("width_vox", [3, 6])
def test_sulcal_sheet_is_thin_and_at_the_sulcus_centre(width_vox):
    lab, t1 = _slab_phantom(width_vox)
    bbox = tuple(slice(0, N) for _ in range(3))
    diffuse, specular = sheet_lines(lab.astype(np.intp), t1, SP, SECTOR, bbox, REAL)
    profile = diffuse[30, :, 32]  # across the slab
    assert profile.max() > 0.9
    assert abs(int(np.argmax(profile)) - 32 + (width_vox % 2 == 0) * 0.5) <= 1.0
    assert (profile > 0.5).sum() * SP <= 1.0  # about one voxel (0.5 mm) wide whatever the CSF width
    assert np.all(specular <= diffuse + 1e-6)
    # the slab's normal (j) is across the beam (i): little specular echo
    assert specular[30, :, 32].max() < 0.3 * profile.max()


def test_vessel_segments_lie_in_tissue_and_follow_the_density():
    lab, _ = phantom()
    lab = lab.astype(np.intp)
    bbox = tuple(slice(0, N) for _ in range(3))
    none = vessel_segments(
        lab, SP, SECTOR, bbox, replace(REAL, vessel_density_per_ml=0.0), np.random.default_rng(0)
    )
    assert not none[0].any()
    few = vessel_segments(
        lab, SP, SECTOR, bbox, replace(REAL, vessel_density_per_ml=5.0), np.random.default_rng(0)
    )
    many = vessel_segments(
        lab, SP, SECTOR, bbox, replace(REAL, vessel_density_per_ml=40.0), np.random.default_rng(0)
    )
    assert 0 < (few[0] > 0.5).sum() < (many[0] > 0.5).sum()
    centres = many[0] > 0.99
    assert np.isin(lab[centres], (L.GREY_MATTER, L.WHITE_MATTER, L.TUMOUR)).all()


def test_edge_partial_volume_darkens_only_the_outer_voxel_layer():
    lab, t1 = phantom()
    sharp = render_ultrasound(
        lab, t1, SP, SECTOR, np.random.default_rng(3), replace(REAL, edge_partial_volume=False)
    )
    soft = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(3), REAL)
    mask = sector_mask(lab.shape, SP, SECTOR)
    assert np.all(soft[~mask] == 0) and np.mean(soft[mask] > 0) > 0.99
    depth = ndimage.distance_transform_edt(mask)
    outer, inner = mask & (depth <= 1), mask & (depth >= 3)
    np.testing.assert_array_equal(soft[inner], sharp[inner])
    assert np.median(soft[outer] / np.maximum(sharp[outer], 1e-6)) < 0.8
    near_zero = soft[mask] < 0.1 * np.median(soft[mask])
    assert 0.003 < near_zero.mean() < 0.05  # RESECT: 0.9-2.6 % of the sector, in the outer layer


def test_tissue_echo_shows_the_t1_grey_white_contrast_and_the_others_do_not():
    lab, t1 = phantom()
    ratios = {}
    for family in ("tissue-echo", "pre-resection"):
        params = replace(family_settings(family).ultrasound, near_field_gain=0.0, hetero_amp=0.0)
        us = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0), params)
        inside = sector_mask(lab.shape, SP, SECTOR)
        grey = np.median(us[inside & (lab == L.GREY_MATTER)])
        white = np.median(us[inside & (lab == L.WHITE_MATTER)])
        ratios[family] = grey / white
    assert ratios["tissue-echo"] < 0.85  # T1: grey 0.6 / white 0.85
    assert ratios["pre-resection"] > 0.9


def test_display_saturation_bounds_the_bright_tail():
    img = np.random.default_rng(0).rayleigh(1.0, (40, 40, 40)).astype(np.float32) ** 4
    soft = compress(img, 0.5, 20.0, 200.0, saturation=6.0)
    hard = compress(img, 0.5, 20.0, 200.0)
    assert soft.max() < 6.0 * 20.0 < hard.max()
    assert np.median(soft) == pytest.approx(np.median(hard), rel=0.02)


@pytest.mark.parametrize("enhancement", [True, False])
def test_posterior_enhancement_only_below_a_saline_cavity(enhancement):
    lab, t1 = phantom()
    cavity = family_settings("post-resection").cavity
    look = CavityLook(
        echogenic=False, rim=False, enhancement=enhancement, echo=0.05, texture=0.0,
        attenuation_db=cavity.saline_attenuation if enhancement else 0.5,
        rim_echo=0.0, rim_mm=1.0, rim_coverage=1.0,
    )  # fmt: skip
    params = replace(apply_cavity_look(REAL, look), hetero_amp=0.0, vessel_density_per_ml=0.0)
    us = render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0), params)
    ratio = posterior_enhancement_ratio(us, lab, SECTOR.apex_vox, SP)
    if enhancement:
        assert ratio > 1.2
    else:
        assert 0.75 < ratio < 1.15


def test_echogenic_cavity_is_brighter_than_a_saline_one():
    lab, t1 = phantom()
    base = {"rim": False, "enhancement": True, "attenuation_db": 0.1, "rim_echo": 0.0, "rim_mm": 1.0}
    saline = CavityLook(echogenic=False, echo=0.05, texture=0.0, rim_coverage=1.0, **base)
    clot = CavityLook(echogenic=True, echo=0.6, texture=0.6, rim_coverage=1.0, **base)
    inside = ndimage.binary_erosion(lab == L.CAVITY, iterations=2) & sector_mask(lab.shape, SP, SECTOR)
    means = [
        render_ultrasound(lab, t1, SP, SECTOR, np.random.default_rng(0), apply_cavity_look(REAL, look))[
            inside
        ].mean()
        for look in (saline, clot)
    ]
    assert means[1] > 2.0 * means[0]
