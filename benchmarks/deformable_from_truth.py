"""Does the registration stay at the truth when started there? A bias check on synthetic data.

    python benchmarks/deformable_from_truth.py --data data/standard --cases 0007 0008 [--config FILE] \
        [--no-guard] [--exclude-cavity]

For each case, the MR is warped by the ground-truth field (``groundtruth/disp_*.nii.gz``), so
that the fixed landmarks correspond to themselves; the method then registers the US to this
perfectly aligned MR. An unbiased method returns (nearly) the zero field; the mean length of
its field at the fixed landmarks (mm) is how far its optimum lies from the truth. The NMI
guard's verdict is printed too (a rejected field is the zero field); ``--no-guard`` shows the
drift itself. ``--exclude-cavity`` is an oracle diagnostic: the true resection cavity (label 6
of ``groundtruth/labels_<case>_0000.nii.gz``) and a 2 mm rim are removed from the sector mask
that the costs and the guard use (``--rim-mm`` sets the rim). ``--from-input`` starts from the
input alignment instead and prints the official TRE (with ``--exclude-cavity``: what the oracle
mask does to a normal registration). ``--fixed-from-mr`` replaces the US by the aligned ceT1
inside the US sector: the same grids, sector and landmarks without the ultrasound appearance, so
any drift left is the method's own (a mechanics check). ``--exact-global DEG MM`` moves the
aligned MR by a known rigid motion (per case, seeded: rotation angles and translations drawn
uniformly up to DEG degrees and MM mm about the sector's centre; the MR resampled by a cubic
spline) and passes that motion to the pipeline as its global stage (``init_fixed2moving``): the
drift is then measured from it, so it shows what an exact global stage (the MR pre-warped on the
working grid) does to the deformable stage.

``--cases all`` takes every case of ``--data``. ``--json FILE`` writes each pair's drift (or TRE)
and the run's settings; ``--baseline FILE`` (an earlier ``--json``) then prints this run against
that one, paired per case (``evaluation/paired.py``: mean difference, bootstrap interval,
cases better / worse, Wilcoxon p), for example the default against a candidate configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from remind2reg.evaluation.metrics import sample_displacement, target_registration_error
from remind2reg.evaluation.paired import compare_per_case
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.geometry import apply_affine, resample_to_grid, voxel_spacing
from remind2reg.inference.io.dataset import find_pairs, landmark_path
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import Image, read_image
from remind2reg.inference.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]


def warped_by_truth(moving: Image, truth_vox: np.ndarray) -> Image:
    """``moving(x + u_true(x))`` on the fixed grid (trilinear): the perfectly aligned MR."""
    coords = np.indices(truth_vox.shape[:3], dtype=np.float32) + np.moveaxis(truth_vox, -1, 0)
    return Image(ndimage.map_coordinates(moving.array, coords, order=1).astype(np.float32), moving.vox2world)


def known_rigid_motion(fixed: Image, seed: int, max_deg: float, max_mm: float) -> np.ndarray:
    """A rigid ``fixed2moving_world`` about the centre of the US sector: rotation angles (xyz,
    degrees) and translation (mm) drawn uniformly in ``[-max, max]``, seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    centre_vox = np.argwhere(sector_mask(fixed.array)).mean(axis=0)
    centre = apply_affine(fixed.vox2world, centre_vox[None])[0]
    rotation = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = centre + rng.uniform(-max_mm, max_mm, 3) - rotation @ centre
    return motion


def moved_by(image: Image, fixed2moving_world: np.ndarray) -> Image:
    """The image moved so that ``moved(M y) = image(y)`` (world; ``M = fixed2moving_world``), on
    the same grid: ``moved(z) = image(inv(M) z)``, cubic spline."""
    inverse = np.linalg.inv(fixed2moving_world)  # moved(z) = image(inv(M) z): the map z -> inv(M) z
    moved = resample_to_grid(
        image.array, image.vox2world, image.shape, image.vox2world, order=3, fixed2moving_world=inverse
    )
    return Image(moved, image.vox2world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "standard")
    parser.add_argument("--cases", nargs="+", required=True, help="case ids, e.g. 0001 0002, or all")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--config", type=Path, help="TOML/JSON pipeline settings")
    parser.add_argument(
        "--moving", nargs="+", default=["0001", "0002"], help="moving sequences (0001 ceT1, 0002 T2)"
    )
    parser.add_argument("--no-guard", action="store_true", help="turn the NMI guard off")
    parser.add_argument("--exclude-cavity", action="store_true", help="oracle: mask out the true cavity")
    parser.add_argument("--rim-mm", type=float, default=2.0, help="rim around the excluded cavity (mm)")
    parser.add_argument(
        "--from-input",
        action="store_true",
        help="start from the input alignment (MR as given) and print the TRE instead of the drift",
    )
    parser.add_argument(
        "--fixed-from-mr",
        action="store_true",
        help="mechanics check: the fixed image is the aligned ceT1 inside the US sector (no US appearance)",
    )
    parser.add_argument(
        "--exact-global",
        nargs=2,
        type=float,
        metavar=("DEG", "MM"),
        help="move the aligned MR by a known rigid motion up to DEG degrees / MM mm and give it as the global stage",
    )
    parser.add_argument("--json", type=Path, help="write every pair's value and the settings here")
    parser.add_argument("--baseline", type=Path, help="an earlier --json: compare with it, paired per case")
    args = parser.parse_args()
    if args.fixed_from_mr and args.from_input:
        parser.error("--fixed-from-mr needs the truth-warped MR: it cannot be combined with --from-input")
    if args.exact_global and args.from_input:
        parser.error("--exact-global moves the truth-warped MR: it cannot be combined with --from-input")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = RegistrationConfig.from_file(args.config) if args.config else RegistrationConfig()
    if args.no_guard:
        config = replace(config, guard=replace(config.guard, enabled=False))
    pairs = find_pairs(args.data, tuple(args.moving))
    if args.from_input:
        print("case  pair  TRE from the input alignment  guard")
    else:
        print("case  pair  mean |u| at landmarks (mm)  |mean u| (mm)  mean u (mm, array axes)  guard")
    cases = sorted({p.case for p in pairs}) if args.cases == ["all"] else args.cases
    rows: list[dict] = []
    for case in cases:
        group = [p for p in pairs if p.case == case]
        if not group:
            raise SystemExit(f"case {case}: no pair in {args.data}")
        fixed = read_image(group[0].fixed, case)
        given = {p.moving_name.modality: read_image(p.moving, case) for p in group}
        moving = (
            given
            if args.from_input
            else {
                p.moving_name.modality: warped_by_truth(
                    given[p.moving_name.modality],
                    read_displacement(args.data / "groundtruth" / p.output_name),
                )
                for p in group
            }
        )
        if args.fixed_from_mr:  # same geometry and sector, MR appearance: any drift is the method's
            mr = moving.get("0001", next(iter(moving.values())))
            inside = sector_mask(fixed.array)  # the method's own sector (no speckle holes)
            fixed = Image(np.where(inside, mr.array, 0).astype(np.float32), fixed.vox2world)
        mask = None
        if args.exclude_cavity:  # oracle: the true cavity (+ rim) removed from the sector mask
            labels = read_image(args.data / "groundtruth" / f"labels_{case}_0000.nii.gz", case).array
            rim = round(args.rim_mm / float(np.mean(fixed.spacing)))
            mask = sector_mask(fixed.array) & ~ndimage.binary_dilation(labels == 6, iterations=rim)
        motion = None  # fixed2moving_world of --exact-global: moved(motion @ x) = aligned(x)
        if args.exact_global:
            motion = known_rigid_motion(fixed, int(case), *args.exact_global)
            moving = {mod: moved_by(img, motion) for mod, img in moving.items()}
        result = run_pipeline(fixed, moving, config, sector_mask=mask, init_fixed2moving=motion)
        landmarks = read_landmarks_csv(landmark_path(group[0].fixed))
        spacing = voxel_spacing(fixed.vox2world)
        target = np.zeros_like(landmarks)  # where x + u(x) should be, minus x (fixed voxels)
        if motion is not None:
            vox2vox = np.linalg.inv(fixed.vox2world) @ motion @ fixed.vox2world
            target = apply_affine(vox2vox, landmarks) - landmarks
        for mod, field in result.fields.items():
            if args.from_input:  # the official TRE of the registration (drift columns left blank)
                pair = next(p for p in group if p.moving_name.modality == mod)
                mov_lms = read_landmarks_csv(landmark_path(pair.moving))
                tre = float(target_registration_error(landmarks, mov_lms, field, given[mod].spacing).mean())
                verdict = "rejected (zero field kept)" if result.notes.get(f"fallback_{mod}") else "accepted"
                rows.append({"case": case, "modality": mod, "value": tre, "accepted": verdict == "accepted"})
                print(f"{case}  {mod}  TRE {tre:.2f} mm  {verdict}", flush=True)
                continue
            u = sample_displacement(field, landmarks, order=1) - target  # (N, 3) fixed voxels
            u_mm = u * spacing
            drift = float(np.linalg.norm(u_mm, axis=1).mean())
            mean = u_mm.mean(axis=0)  # the systematic part of the drift (a translation)
            verdict = "rejected (zero field kept)" if result.notes.get(f"fallback_{mod}") else "accepted"
            axes = " ".join(f"{c:+.2f}" for c in mean)
            rows.append({"case": case, "modality": mod, "value": drift, "accepted": verdict == "accepted"})
            print(
                f"{case}  {mod}  {drift:26.2f}  {np.linalg.norm(mean):13.2f}  {axes:>23}  {verdict}",
                flush=True,
            )
    measure = "tre_from_input" if args.from_input else "drift_from_truth"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.json:
        args.json.write_text(json.dumps({"measure": measure, "settings": settings, "rows": rows}, indent=1))
    if args.baseline:
        compare_with_baseline(rows, measure, args.baseline)


def compare_with_baseline(rows: list[dict], measure: str, baseline_file: Path) -> None:
    """Print this run minus the baseline run, paired per case (mean over each case's pairs, mm)."""
    baseline = json.loads(baseline_file.read_text())
    if baseline["measure"] != measure:
        raise SystemExit(f"{baseline_file}: it measured {baseline['measure']}, this run {measure}")
    mine = {f"{r['case']}_{r['modality']}": r["value"] for r in rows}  # pair key: <case>_<modality>
    theirs = {f"{r['case']}_{r['modality']}": r["value"] for r in baseline["rows"]}
    case_of = {key: key.split("_")[0] for key in {*mine, *theirs}}
    try:
        cmp, a, b = compare_per_case(mine, theirs, case_of)
    except ValueError:
        raise SystemExit(f"{baseline_file}: no pair in common with this run") from None
    pairs = len(set(mine) & set(theirs))

    def stats(values: dict[str, float]) -> str:
        v = np.array(list(values.values()))
        return f"mean {v.mean():.2f}, median {np.median(v):.2f}, under 1 mm {int((v < 1).sum())}/{v.size}"

    print(
        f"this run minus {baseline_file.name} ({measure}, {cmp.n} cases of {pairs} pairs): {cmp.summary()}; "
        f"this run: {stats(a)}; baseline: {stats(b)}"
    )


if __name__ == "__main__":
    main()
