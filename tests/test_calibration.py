"""Tests of the ultrasound statistics (synthesis/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from remind2reg.inference.core.sector import sector_mask as sector_mask_from_volume
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.calibration import (
    UsStatistics,
    autocorrelation_fwhm,
    cavity_statistics,
    estimate_beam_axis,
    local_snr,
    resect_statistics,
    ridge_statistics,
    statistic_rows,
    statistics_table,
    us_statistics,
)
from remind2reg.synthesis.ultrasound import Sector, sector_mask

SP = 0.5
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.sqrt(2.0)  # ACF of filtered noise


def correlated_volume(sigmas_vox, n=64, seed=0):
    """Positive Gaussian-filtered white noise inside a box, zero outside."""
    rng = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), sigmas_vox, mode="wrap")
    vol = (50.0 + 10.0 * g / g.std()).astype(np.float32)
    out = np.zeros_like(vol)
    out[4:-4, 4:-4, 4:-4] = vol[4:-4, 4:-4, 4:-4]
    return out


@pytest.mark.parametrize("sigmas", [(1.5, 1.5, 1.5), (1.0, 2.0, 1.5)])
def test_speckle_size_recovered(sigmas):
    vol = correlated_volume(sigmas)
    mask = sector_mask_from_volume(vol)
    fwhm = autocorrelation_fwhm(vol, mask, SP)
    expect = FWHM_PER_SIGMA * np.asarray(sigmas) * SP
    assert np.allclose(fwhm, expect, rtol=0.15), (fwhm, expect)


def test_speckle_size_distinguishes_sizes():
    small = autocorrelation_fwhm(correlated_volume(1.0), sector_mask_from_volume(correlated_volume(1.0)), SP)
    big_vol = correlated_volume(2.0)
    big = autocorrelation_fwhm(big_vol, sector_mask_from_volume(big_vol), SP)
    assert np.all(np.asarray(big) > 1.6 * np.asarray(small))


def test_quantiles_near_zero_and_snr():
    vol = correlated_volume(1.0)
    inside = vol > 0
    rng = np.random.default_rng(1)
    holes = inside & (rng.random(vol.shape) < 0.05)
    vol[holes] = 0.0  # isolated anechoic voxels inside the sector still count as inside
    s = us_statistics(vol, SP, name="box")
    assert isinstance(s, UsStatistics)
    assert s.q_norm[2] == pytest.approx(1.0)
    assert s.q_raw[2] == pytest.approx(50.0, abs=1.0)
    assert s.near_zero_fraction == pytest.approx(0.05, abs=0.01)
    assert list(s.q_raw) == sorted(s.q_raw)
    assert s.bbox_fill == pytest.approx(1.0, abs=0.01)


def test_beam_axis_opening_and_depth_profile():
    """RESECT-like truncated fan (40 mm imaged, 70 x 50 deg) on a 1 mm grid."""
    n, sp = 96, 1.0
    sec = Sector((-20.0, 48.0, 48.0), (1.0, 0.0, 0.0), depth_mm=65.0, opening_deg=(70.0, 50.0), near_mm=25.0)
    mask = sector_mask((n, n, n), sp, sec)
    ii = np.arange(n, dtype=np.float32)[:, None, None]
    vol = np.where(mask, 100.0 - ii, 0.0).astype(np.float32)  # darker with depth along i
    axis, _ = estimate_beam_axis(mask)
    assert axis[0] > 0.95
    s = us_statistics(vol, sp)
    assert s.depth_profile[0] == pytest.approx(1.0, abs=0.05)
    assert np.all(np.diff(s.depth_profile) < 0)
    assert s.depth_extent_mm == pytest.approx(40.0, abs=3.0)
    assert s.opening_deg[0] > s.opening_deg[1]
    assert s.opening_deg[0] == pytest.approx(70.0, abs=10.0)
    assert s.opening_deg[1] == pytest.approx(50.0, abs=10.0)


def test_statistics_table_lists_both_sides():
    a = us_statistics(correlated_volume(1.0, seed=0), SP, name="a")
    b = us_statistics(correlated_volume(1.5, seed=1), SP, name="b")
    table = statistics_table([a, a], [b])
    lines = table.splitlines()
    assert lines[0].startswith("| statistic | real (n=2)")
    assert "simulated (n=1)" in lines[0]
    assert any(line.startswith("| speckle FWHM mean (mm) |") for line in lines)
    assert len(lines) > 20


@pytest.mark.shared_data
def test_resect_statistics_real_volumes(tmp_path, shared_data):
    folder = shared_data / "resect_us"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    files = sorted(folder.glob("*.nii.gz"))[:2]  # two volumes keep the test fast
    for f in files:
        (tmp_path / f.name).symlink_to(f)
    stats = resect_statistics(str(tmp_path))
    assert [s.name for s in stats] == [f.name.split(".")[0] for f in files]
    for s in stats:
        assert 0.5 < np.mean(s.speckle_fwhm_mm) < 5.0
        assert 30.0 < s.depth_extent_mm < 60.0
        assert 0.1 < s.bbox_fill < 0.6
        assert s.q_raw[0] > 0


def test_exclusion_changes_intensity_not_shape_statistics():
    vol = correlated_volume(1.0)
    vol[12:44, 12:44, 12:44] = 2.0  # a dark "cavity"
    exclude = np.zeros(vol.shape, dtype=bool)
    exclude[10:46, 10:46, 10:46] = True
    full = us_statistics(vol, SP)
    excl = us_statistics(vol, SP, exclude=exclude)
    assert full.q_norm[0] < 0.2 < excl.q_norm[0]
    assert excl.depth_extent_mm == full.depth_extent_mm and excl.bbox_fill == full.bbox_fill
    assert excl.extra["excluded fraction"] == pytest.approx(36**3 / 56**3, rel=0.05)


def test_statistics_table_has_simulated_range():
    a = us_statistics(correlated_volume(1.0, seed=0), SP, name="a")
    b = us_statistics(correlated_volume(1.5, seed=1), SP, name="b")
    lines = statistics_table([a], [b, b]).splitlines()
    assert "simulated min..max" in lines[0]
    assert all(line.count("|") == 7 for line in lines)


# --------------------------------------------------------------------------------------------
# Structure statistics
# --------------------------------------------------------------------------------------------


def sheets_volume(sd_mm: float, n: int = 96, seed: int = 0) -> np.ndarray:
    """Speckle-like background (median 1) with bright planar sheets of Gaussian profile
    (sd ``sd_mm``) every 8 mm across i, tilted a little so that they are not grid-aligned."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*(np.arange(n, dtype=np.float64),) * 3, indexing="ij")
    u = (ii + 0.2 * jj + 0.1 * kk) / np.sqrt(1.05) * SP  # mm along the sheets' normal
    dist = np.abs((u % 8.0) - 4.0)  # distance to the nearest sheet centre (sheets at u = 4 + 8 m)
    sheets = 3.0 * np.exp(-(dist**2) / (2 * sd_mm**2))
    background = rng.rayleigh(1.0, (n,) * 3) ** 0.5
    return (background / np.median(background) + sheets).astype(np.float32)


@pytest.mark.parametrize("sd_mm", [0.3, 0.8])
def test_ridge_width_recovers_the_sheet_profile(sd_mm):
    vol = sheets_volume(sd_mm)
    inner = np.zeros(vol.shape, dtype=bool)
    inner[8:-8, 8:-8, 8:-8] = True
    fwhm, q25, q75, density, contrast = ridge_statistics(vol, inner, SP)
    expect = 2.0 * np.sqrt(2.0 * np.log(2.0)) * sd_mm
    # the speckle background adds about a voxel (0.5 mm) to the thinnest profiles
    assert expect - 0.2 < fwhm < expect + 0.6, (fwhm, expect)
    assert q25 <= fwhm <= q75 and density > 0.005 and contrast > 2.0


def test_ridge_width_tells_thin_from_thick_lines():
    inner = np.zeros((96,) * 3, dtype=bool)
    inner[8:-8, 8:-8, 8:-8] = True
    thin = ridge_statistics(sheets_volume(0.3), inner, SP)[0]
    thick = ridge_statistics(sheets_volume(1.0), inner, SP)[0]
    assert thick > thin + 1.0


def test_local_snr_of_rayleigh_speckle():
    vol = np.random.default_rng(0).rayleigh(1.0, (48, 48, 48)).astype(np.float32)
    assert local_snr(vol, np.ones(vol.shape, dtype=bool), SP) == pytest.approx(1.91, abs=0.15)


def _grid(n: int = 48):
    return np.meshgrid(*(np.arange(n, dtype=np.float64) - n / 2,) * 3, indexing="ij")


def test_cavity_shape_statistics():
    ii, jj, kk = _grid()
    sector = np.ones(ii.shape, dtype=bool)
    ball = np.where(ii**2 + jj**2 + kk**2 <= 14**2, L.CAVITY, L.WHITE_MATTER)
    cube = np.where((np.abs(ii) <= 11) & (np.abs(jj) <= 11) & (np.abs(kk) <= 11), L.CAVITY, L.WHITE_MATTER)
    slab = (np.abs(ii) <= 14) & (np.abs(jj) <= 3) & (np.abs(kk) <= 14)
    u_shape = np.where(slab & ~((np.abs(ii) <= 8) & (kk > -8)), L.CAVITY, L.WHITE_MATTER)  # far from convex
    s_ball, s_cube, s_u = (cavity_statistics(x, sector, SP) for x in (ball, cube, u_shape))
    assert s_ball.sphericity == pytest.approx(1.0, abs=0.08) and s_ball.solidity > 0.9
    assert s_cube.sphericity == pytest.approx(0.81, abs=0.08) and s_cube.solidity > 0.9
    assert s_u.sphericity < 0.7 and s_u.solidity < 0.7
    assert s_ball.sector_fraction == pytest.approx((ball == L.CAVITY).mean())
    assert s_ball.volume_ml == pytest.approx(4 / 3 * np.pi * (14 * SP) ** 3 / 1000, rel=0.05)
    assert cavity_statistics(np.full(ii.shape, L.WHITE_MATTER), sector, SP) is None


def test_structure_rows_are_in_the_table():
    s = us_statistics(sheets_volume(0.5, n=64), SP, name="sheets")
    rows = statistic_rows(s)
    for key in (
        "ridge FWHM median (mm)",
        "ridge density",
        "local SNR (3 mm)",
        "depth fall-off (bins 7-9 / bins 2-3)",
    ):
        assert key in rows and np.isfinite(rows[key]), key
