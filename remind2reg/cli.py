"""The ``remind2reg`` command line: ``register``, ``evaluate``, ``report``, ``export``, ``pack``,
``synth`` and ``train-refiner``.

Exit codes (:mod:`remind2reg.inference.errors`):

* 0: success. Also ``register`` with failed cases under ``--allow-failures``: the summary at
  the end and ``timings.json`` still list them.
* 1: a step failed: a case of ``register`` raised an error that is not an invalid input, or a
  pair of ``report`` could not be drawn.
* 2: bad command line (or a bad ``$REMIND2REG_*`` value).
* 3: the input is missing, unreadable or invalid: no pair found, a bad ``--config``, a
  dataset json that disagrees with the files, or, for ``register``, every failed case failed
  on an invalid input (each message names the case and the file); ``export`` with pairs it
  could not export (listed at the end).

What ``register`` does when a case fails (``--on-error``, default ``$REMIND2REG_ON_ERROR`` or
``skip``):

* ``fail``: stop at that case. Finished cases keep their files; exit 1 or 3.
* ``skip``: log the error, write nothing for the case (a file left there by an earlier run
  is removed), go on; exit 1 or 3 at the end, after a summary of the failures.
* ``identity``: as ``skip``, but write the zero field (the initial alignment) for the case,
  with ``"fallback": "identity"`` and the error in ``timings.json``. This makes a complete,
  valid submission, so a challenge container should run with ``REMIND2REG_ON_ERROR=identity``
  and ``REMIND2REG_ALLOW_FAILURES=1``.

The exit status is non-zero whenever a case failed, unless ``--allow-failures`` (or
``$REMIND2REG_ALLOW_FAILURES=1``) says failures are acceptable. ``--resume`` keeps pairs whose
output exists and reads back as a valid field; outputs are bit-identical for the same input and
``--seed`` on the CPU, so a resumed run ends with the same files as a full one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from remind2reg import __version__
from remind2reg.inference.device import resolve_device
from remind2reg.inference.errors import (
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    Remind2RegError,
    UsageError,
)
from remind2reg.inference.settings import (
    DEVICES,
    METHODS,
    MODALITY_CHOICES,
    NETS,
    ON_ERROR_POLICIES,
    parse_scheduler,
)
from remind2reg.synthesis.families import DEFAULT_FAMILY, FAMILIES

log = logging.getLogger("remind2reg")


def _scheduler(value: str) -> str:
    """argparse type of ``--scheduler`` (checked without importing Dask)."""
    try:
        parse_scheduler(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """A default taken from the environment (the container sets these), checked like a flag."""
    value = os.environ.get(name, default)
    if value not in choices:
        print(f"remind2reg: ${name}={value!r} is not one of {', '.join(choices)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return value


def _add_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="register every (US, MR) pair of an input folder")
    p.add_argument(
        "--input", required=True, type=Path, help="ReMIND2Reg folder (dataset root or flat /input)"
    )
    p.add_argument("--output", required=True, type=Path, help="folder for disp_*.nii.gz and timings.json")
    p.add_argument(
        "--method",
        default="convex-adam",
        choices=METHODS,
        help="registration method: %(choices)s (niftyreg-*: reg_aladin alone, the organisers' baseline family)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML/JSON file overriding the pipeline settings (see inference/config.py)",
    )
    p.add_argument(
        "--modalities",
        default=_env_choice("REMIND2REG_MODALITIES", "both", sorted(MODALITY_CHOICES)),
        choices=sorted(MODALITY_CHOICES),
        help="moving sequences (default: $REMIND2REG_MODALITIES or both)",
    )
    p.add_argument(
        "--device",
        default=_env_choice("REMIND2REG_DEVICE", "auto", DEVICES),
        choices=DEVICES,
        help="compute device; auto falls back to the CPU with a warning (default: $REMIND2REG_DEVICE or auto)",
    )
    p.add_argument(
        "--on-error",
        default=_env_choice("REMIND2REG_ON_ERROR", "skip", ON_ERROR_POLICIES),
        choices=ON_ERROR_POLICIES,
        help="a failing case: fail = stop the batch, skip = write nothing and go on, identity = write "
        "the zero field, record it in timings.json and go on (default: $REMIND2REG_ON_ERROR or skip)",
    )
    p.add_argument(
        "--allow-failures",
        action=argparse.BooleanOptionalAction,
        default=_env_choice("REMIND2REG_ALLOW_FAILURES", "0", ["0", "1"]) == "1",
        help="exit 0 even when cases failed (default: $REMIND2REG_ALLOW_FAILURES=1 or no)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep pairs whose output exists and is a valid field; redo the rest",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (same input + seed: same fields on CPU)")
    p.add_argument(
        "--scheduler",
        default=None,
        type=_scheduler,
        metavar="local[:N]|ADDRESS",
        help="run the cases as Dask tasks: a local cluster of N worker processes, or a scheduler address "
        "(tcp://host:8786); needs pip install 'remind2reg[cluster]' (default: in this process)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per case (fields depend on it; default: torch's, or cores / workers with --scheduler)",
    )
    p.add_argument(
        "--init-transforms",
        type=Path,
        default=os.environ.get("REMIND2REG_INIT_TRANSFORMS") or None,
        metavar="FOLDER",
        help="start each case from a rigid/affine transform in FOLDER named after its ultrasound "
        "(ReMIND2Reg_0001_0000.txt: reg_aladin -aff matrix; .tfm/.h5/binary .mat: ITK or ANTs, "
        "fixed-to-moving as registration tools write them); it replaces the global stage, the "
        "guard judges it; niftyreg-* start reg_aladin from it (default: $REMIND2REG_INIT_TRANSFORMS or none)",
    )
    p.add_argument(
        "--lock-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another run holds the output folder, wait this long for it before refusing (default 0)",
    )
    p.set_defaults(func=_run_register)


def _add_fields_arguments(
    p: argparse.ArgumentParser, source: str, source_help: str, out_help: str | None = None
) -> None:
    """The arguments of the commands that read predicted fields: ``--<source>`` (the images the
    fields were made from), ``--pred``, ``--out`` (when ``out_help`` is given) and ``--modalities``."""
    p.add_argument(f"--{source}", required=True, type=Path, help=source_help)
    p.add_argument("--pred", required=True, type=Path, help="folder with disp_*.nii.gz")
    if out_help is not None:
        p.add_argument("--out", required=True, type=Path, help=out_help)
    p.add_argument("--modalities", default="both", choices=sorted(MODALITY_CHOICES), help="moving sequences")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted fields on landmarks, as the challenge does")
    _add_fields_arguments(p, "data", "dataset folder with images and landmarks")
    p.add_argument("--json", type=Path, help="write metrics JSON (official layout + extras)")
    p.add_argument("--csv", type=Path, help="write one CSV row per pair")
    p.set_defaults(func=_run_evaluate)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="visual QC: overlays before/after, landmarks, det J and patch-wise MI per pair"
    )
    _add_fields_arguments(
        p,
        "data",
        "dataset folder (images, landmarks if any)",
        "folder for index.html and one PNG per pair",
    )
    p.set_defaults(func=_run_report)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="for viewers and other tools: each MR warped onto its US, and each field as an ITK "
        "displacement transform (3D Slicer, ANTs, SimpleITK)",
    )
    _add_fields_arguments(
        p, "data", "the input folder the fields were made from", "folder for the exported files"
    )
    p.add_argument(
        "--what",
        nargs="+",
        default=["warped", "itk"],
        choices=["warped", "itk"],
        help="warped: ReMIND2Reg_<case>_<mod>_warped.nii.gz, the MR on the US grid; itk: "
        "ReMIND2Reg_<case>_<mod>_fixed2moving_itk.nii.gz, an ITK displacement field (default: both)",
    )
    p.set_defaults(func=_run_export)


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack", help="check the predicted fields against the input and zip a leaderboard submission"
    )
    _add_fields_arguments(p, "input", "the input folder the fields were made from", "zip archive to write")
    p.set_defaults(func=_run_pack)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a synthetic ReMIND2Reg-format dataset with ground truth")
    p.add_argument("--out", required=True, type=Path, help="output dataset folder")
    p.add_argument("--cases", type=int, default=2, help="number of cases")
    p.add_argument("--source", default="mni", choices=["mni", "shared"], help="pre-operative MRI source")
    p.add_argument(
        "--shared-data", type=Path, default=None, help="shared data folder (default ../shared/data)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--grid",
        type=int,
        default=256,
        help="voxels per side (default 256; with the default --fov-mm 128: 0.5 mm voxels)",
    )
    p.add_argument(
        "--fov-mm",
        type=float,
        default=128.0,
        help="side of the cube in mm (ReMIND2Reg: 128; smaller: faster)",
    )
    p.add_argument("--first-case", type=int, default=1, help="number of the first case (4 digits in names)")
    p.add_argument(
        "--family",
        nargs="+",
        default=[DEFAULT_FAMILY],
        choices=FAMILIES,
        help="simulator family: what the iUS looks like and how the brain moved (docs/simulator.md; "
        "default %(default)s); several are given to the cases in turn",
    )
    p.set_defaults(func=_run_synth)


def _add_train_refiner(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-refiner",
        help="train the learned refinement network on synthetic pairs (SynthMorph recipe, resumable)",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt and log.csv")
    p.add_argument(
        "--steps", type=int, default=2000, help="total optimiser steps (a resumed run goes on to this)"
    )
    p.add_argument("--size", type=int, default=64, help="voxels per side of the synthetic pairs")
    p.add_argument("--batch", type=int, default=1, help="pairs per step")
    p.add_argument(
        "--net", default="small", choices=sorted(NETS), help="architecture: small (CPU) or base (GPU)"
    )
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: TrainConfig's)")
    p.add_argument(
        "--lam", type=float, default=None, help="weight of the gradient penalty (default: TrainConfig's)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help="processes that make the synthetic pairs ahead (0: none)"
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start a new run from these weights (e.g. weights/refiner_v2.pt; architecture taken from the file)",
    )
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt if it exists")
    p.add_argument("--device", default="auto", choices=DEVICES, help="compute device (bf16 autocast on CUDA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the training data")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop this session after a checkpoint")
    p.add_argument(
        "--export", type=Path, default=None, help="write the final weights here (e.g. weights/refiner_v2.pt)"
    )
    p.set_defaults(func=_run_train_refiner)


def _run_train_refiner(args: argparse.Namespace) -> int:
    import torch

    from remind2reg.training.train import TrainConfig, train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    optional = {k: v for k, v in (("lr", args.lr), ("lam", args.lam)) if v is not None}
    summary = train(
        args.out,
        TrainConfig(
            size=args.size, batch=args.batch, steps=args.steps, seed=args.seed, net=NETS[args.net], **optional
        ),
        resume=args.resume,
        workers=args.workers,
        init=args.init,
        device=device,
        max_minutes=args.max_minutes,
        export=args.export,
    )
    log.info(
        "Step %d, %.1f min: validation Dice %.4f (identity %.4f)",
        summary["step"],
        summary["elapsed_s"] / 60,
        summary["val_dice"],
        summary["val_dice_identity"],
    )
    return EXIT_OK


def _run_register(args: argparse.Namespace) -> int:
    from remind2reg.inference.batch import register_folder
    from remind2reg.inference.config import RegistrationConfig

    config = RegistrationConfig.from_file(args.config) if args.config else RegistrationConfig()
    device = resolve_device(args.device)
    summary = register_folder(
        args.input,
        args.output,
        method=args.method,
        modalities=MODALITY_CHOICES[args.modalities],
        device=device,
        config=config,
        on_error=args.on_error,
        resume=args.resume,
        seed=args.seed,
        lock_wait_s=args.lock_wait,
        scheduler=args.scheduler,
        threads=args.threads,
        init_transforms=args.init_transforms,
    )
    if summary.ok:
        return EXIT_OK
    if args.allow_failures:
        log.warning("%d cases failed; exiting with 0 as --allow-failures asks", len(summary.failures))
        return EXIT_OK
    return EXIT_INPUT if summary.input_errors_only else EXIT_FAILURE


def _run_evaluate(args: argparse.Namespace) -> int:
    from remind2reg.evaluation.evaluate import evaluate, write_report

    report = evaluate(args.data, args.pred, MODALITY_CHOICES[args.modalities])
    print(report.table())
    write_report(report, args.json, args.csv)
    return EXIT_INPUT if report.failures else EXIT_OK


def _run_report(args: argparse.Namespace) -> int:
    from remind2reg.evaluation.report import build_report

    result = build_report(args.data, args.pred, args.out, MODALITY_CHOICES[args.modalities])
    print(f"wrote {result.index}")
    return EXIT_OK if result.ok else EXIT_FAILURE


def _run_export(args: argparse.Namespace) -> int:
    from remind2reg.evaluation.export import export_fields

    result = export_fields(
        args.data, args.pred, args.out, MODALITY_CHOICES[args.modalities], tuple(args.what)
    )
    print(f"wrote {len(result.written)} files into {args.out}")
    for key, error in result.failures.items():
        print(f"  not exported: {key}: {error}")
    return EXIT_OK if result.ok else EXIT_INPUT


def _run_pack(args: argparse.Namespace) -> int:
    from remind2reg.evaluation.pack import pack_submission

    out = pack_submission(args.input, args.pred, args.out, MODALITY_CHOICES[args.modalities])
    print(f"wrote {out}")
    return EXIT_OK


def _run_synth(args: argparse.Namespace) -> int:
    from remind2reg.synthesis.generate import SynthConfig, generate_dataset

    config = SynthConfig(grid=args.grid, fov_mm=args.fov_mm)
    generate_dataset(
        args.out,
        n_cases=args.cases,
        source=args.source,
        seed=args.seed,
        config=config,
        shared_data=args.shared_data,
        first_case=args.first_case,
        family=args.family,
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remind2reg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_register(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_export(sub)
    _add_pack(sub)
    _add_synth(sub)
    _add_train_refiner(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return args.func(args)
    except InputError as exc:
        log.error("%s", exc)
        return EXIT_INPUT
    except UsageError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except Remind2RegError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
