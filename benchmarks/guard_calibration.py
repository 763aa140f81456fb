"""Calibrate the guard on the tuning half: how many bad results a threshold saves, how many good ones it throws away.

    python benchmarks/guard_calibration.py --data data/standard [--config FILE] [--split tuning]

For every case of the half, the pipeline runs once with the guard off; each group's three
candidates (the input alignment, the global stage alone, the whole result) are then scored by
the guard's criteria (NMI, LC2; measured on the MR as given inside the sector, never the MIND
SSD the optimisers minimised) and by their true TRE (the challenge formula on the landmarks).
The decision rule is the guard's: simplest first, a candidate replaces the one chosen so far
when its criterion gain exceeds the threshold. For each criterion and threshold the table gives
the mean TRE of the decisions, the pairs made worse than the input, and against the rule
without a margin (threshold 0): the pairs a threshold saves (a harmful candidate refused) and
the good results it throws away (a helpful candidate refused).

``nmi-relative`` is the guard's relative margin (``[guard] relative_margin``): its thresholds
are multiples ``k`` of an NMI jitter (the mean change of the NMI under 1-voxel shifts), not NMI
units; ``nmi-relative-candidate`` takes the jitter at each candidate's own field,
``nmi-relative-input`` at the input alignment (one jitter per pair). ``lc2-relative-input`` is
the same rule on LC2 with LC2's own jitter; ``nmi-and-lc2-relative-input`` asks both criteria to
rise by ``k`` of their own jitters (two unoptimised criteria must agree).

``--compare RULE@K`` (for example ``nmi-and-lc2-relative-input@2``) also prints that rule
against the default guard's (``nmi-relative-input@2``), paired per case: per case the mean TRE
of each rule's decisions over its pairs (``evaluation/paired.py``; negative: the rule is
better), the cases better / worse / same and the Wilcoxon p.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from remind2reg.evaluation.metrics import target_registration_error
from remind2reg.evaluation.paired import compare_per_case
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.dataset import find_pairs, landmark_path
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import header_spacing, read_image
from remind2reg.inference.pipeline import StageClock, propose
from remind2reg.inference.settings import GuardSettings
from remind2reg.inference.stages.embedding import embed_transforms
from remind2reg.inference.stages.guard import FULL, GLOBAL, IDENTITY, candidates, choose, criterion, jitter

CRITERIA = {"nmi": GuardSettings(criterion="nmi"), "lc2": GuardSettings(criterion="lc2")}
THRESHOLDS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02)
RELATIVE = {  # the NMI with a margin in units of a jitter: where the jitter is taken
    "nmi-relative-candidate": "candidate",
    "nmi-relative-input": "input",
}
RELATIVE_THRESHOLDS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0)
LC2_RELATIVE = "lc2-relative-input"  # LC2 with a margin of k LC2 jitters at the input
AGREEING = "nmi-and-lc2-relative-input"  # both criteria must rise by k of their own jitters


def case_candidates(pairs: list, data: Path, config: RegistrationConfig) -> list[dict]:
    """Per pair of a case: each candidate's criteria (summed over its group) and TRE."""
    fixed = read_image(pairs[0].fixed, pairs[0].case)
    moving = {p.moving_name.modality: read_image(p.moving, p.case) for p in pairs}
    # the pipeline's own stages up to the guard (refinement included when configured)
    proposal = propose(fixed, moving, config, torch.device("cpu"), StageClock())
    case, sector = proposal.case, proposal.sector
    rows = []
    for transform in proposal.transforms:
        options = dict(candidates(transform))
        scores = {
            name: {
                c: float(sum(criterion(case.images, m, None if name == IDENTITY else t.total_field(), s)
                             for m in transform.modalities))
                for c, s in CRITERIA.items()
            }
            for name, t in options.items()
        }  # fmt: skip
        for name, t in options.items():
            field = None if name == IDENTITY else t.total_field()
            scores[name]["nmi_jitter"] = jitter(case.images, transform.modalities, field, CRITERIA["nmi"])
        # LC2's jitter at the input only (the scale the relative rules use; LC2 is the costlier)
        scores[IDENTITY]["lc2_jitter"] = jitter(case.images, transform.modalities, None, CRITERIA["lc2"])
        fields = {
            name: embed_transforms((t,), sector.grid, fixed.vox2world)[0].field for name, t in options.items()
        }
        for p in (p for p in pairs if p.moving_name.modality in transform.modalities):
            fix = read_landmarks_csv(landmark_path(p.fixed, data), p.case)
            mov = read_landmarks_csv(landmark_path(p.moving, data), p.case)
            spacing = header_spacing(p.moving)
            tre = {
                n: float(target_registration_error(fix, mov, f, spacing).mean()) for n, f in fields.items()
            }
            rows.append({"pair": p.key, "scores": scores, "tre": tre})
    return rows


def decide_agreeing(row: dict, k: float) -> str:
    """Simplest first, a candidate replaces the one chosen so far only when it raises BOTH the NMI
    and LC2 by more than ``k`` times their own jitter at the input: two criteria, neither of
    them optimised, must agree (a candidate that fools one of them is refused)."""
    names = [n for n in (IDENTITY, GLOBAL, FULL) if n in row["scores"]]
    s = row["scores"]
    chosen = names[0]
    for name in names[1:]:
        if all(s[name][c] - s[chosen][c] > k * s[IDENTITY][f"{c}_jitter"] for c in ("nmi", "lc2")):
            chosen = name
    return chosen


def decide(row: dict, crit: str, threshold: float) -> str:
    """The guard's rule (:func:`~remind2reg.inference.stages.guard.choose`) on one pair's stored scores."""
    names = [n for n in (IDENTITY, GLOBAL, FULL) if n in row["scores"]]
    if crit == AGREEING:
        return decide_agreeing(row, threshold)
    if crit == LC2_RELATIVE:
        totals = [(n, row["scores"][n]["lc2"]) for n in names]
        jitters = {n: row["scores"][IDENTITY]["lc2_jitter"] for n in names if n != IDENTITY}
        return choose(totals, 0.0, jitters, threshold)
    if crit in RELATIVE:
        totals = [(n, row["scores"][n]["nmi"]) for n in names]
        at = {n: n if RELATIVE[crit] == "candidate" else IDENTITY for n in names}
        jitters = {n: row["scores"][at[n]]["nmi_jitter"] for n in names if n != IDENTITY}
        return choose(totals, 0.0, jitters, threshold)
    return choose([(n, row["scores"][n][crit]) for n in names], threshold)


def table(rows: list[dict]) -> str:
    lines = [
        "| criterion | threshold | mean TRE | worse than input | saved vs 0 | thrown away vs 0 |",
        "|---|---|---|---|---|---|",
    ]
    plans = [(c, THRESHOLDS) for c in CRITERIA]
    if all("nmi_jitter" in r["scores"][IDENTITY] for r in rows):
        plans += [(c, RELATIVE_THRESHOLDS) for c in RELATIVE]
    if all("lc2_jitter" in r["scores"][IDENTITY] for r in rows):
        plans += [(LC2_RELATIVE, RELATIVE_THRESHOLDS), (AGREEING, RELATIVE_THRESHOLDS)]
    for crit, thresholds in plans:
        base = [decide(r, crit, 0.0) for r in rows]
        for t in thresholds:
            chosen = [decide(r, crit, t) for r in rows]
            tre = [r["tre"][c] for r, c in zip(rows, chosen, strict=True)]
            worse = sum(r["tre"][c] > r["tre"][IDENTITY] for r, c in zip(rows, chosen, strict=True))
            changed = [(r, b, c) for r, b, c in zip(rows, base, chosen, strict=True) if b != c]
            saved = sum(r["tre"][c] < r["tre"][b] for r, b, c in changed)
            thrown = sum(r["tre"][c] > r["tre"][b] for r, b, c in changed)
            lines.append(
                f"| {crit} | {t:g} | {np.mean(tre):.2f} | {worse}/{len(rows)} | {saved} | {thrown} |"
            )
    oracle = np.mean([min(r["tre"].values()) for r in rows])
    fixed_choice = {
        n: np.mean([r["tre"].get(n, r["tre"][IDENTITY]) for r in rows]) for n in (IDENTITY, GLOBAL, FULL)
    }
    lines.append("")
    lines.append(
        "always: " + ", ".join(f"{n} {v:.2f}" for n, v in fixed_choice.items()) + f"; oracle {oracle:.2f} mm"
    )
    return "\n".join(lines)


DEFAULT_RULE = "nmi-relative-input@2"  # the default guard: [guard] relative_margin = 2, NMI


def parse_rule(text: str) -> tuple[str, float]:
    """``RULE@K`` -> (rule, k); a rule of :func:`decide`."""
    crit, sep, k = text.rpartition("@")
    known = {*CRITERIA, *RELATIVE, LC2_RELATIVE, AGREEING}
    if not sep or crit not in known:
        raise ValueError(f"expected RULE@K with RULE one of {sorted(known)}, got {text!r}")
    return crit, float(k)


def compare_rules(rows: list[dict], candidate: str, baseline: str = DEFAULT_RULE) -> str:
    """One line: ``candidate`` minus ``baseline`` (TRE of their decisions), paired per case."""
    tres = {}
    for rule in (candidate, baseline):
        crit, k = parse_rule(rule)
        tres[rule] = {r["pair"]: r["tre"][decide(r, crit, k)] for r in rows}
    case_of = {r["pair"]: r["pair"].split("_")[0] for r in rows}  # <case>_0000<--<case>_<mod>
    cmp, _, _ = compare_per_case(tres[candidate], tres[baseline], case_of)
    return (
        f"{candidate} minus {baseline} ({cmp.n} cases, {len(rows)} pairs): {cmp.summary()}: {cmp.verdict()}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/standard"))
    ap.add_argument("--config", type=Path, help="pipeline settings (the guard is ignored)")
    ap.add_argument("--split", default="tuning", choices=["tuning", "held-out", "all"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, help="write (or, with --no-run, read) the per-pair rows")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--compare", nargs="+", default=[], help="RULE@K: paired against the default rule")
    args = ap.parse_args(argv)
    for rule in args.compare:
        try:
            parse_rule(rule)
        except ValueError as err:
            ap.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_run:
        rows = json.loads(args.json.read_text())
    else:
        config = RegistrationConfig.from_file(args.config) if args.config else RegistrationConfig()
        split = json.loads((args.data / "split.json").read_text())
        cases = split["cases"] if args.split == "all" else split[args.split]
        pairs = [p for p in find_pairs(args.data) if p.case in cases]
        rows = []
        for case in sorted({p.case for p in pairs}):
            rows += case_candidates([p for p in pairs if p.case == case], args.data, config)
            print(
                f"case {case}: "
                + "; ".join(
                    f"{r['pair']} {json.dumps(r['tre'])}" for r in rows if r["pair"].startswith(case)
                ),
                flush=True,
            )
        if args.json:
            write_text_atomic(args.json, json.dumps(rows, indent=1))
    print(table(rows))
    for rule in args.compare:
        print(compare_rules(rows, rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())
