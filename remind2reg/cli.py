"""The ``remind2reg`` command line: ``register``, ``evaluate``, ``pack`` and ``synth`` subcommands.

Exit codes: 0 success, 1 a step failed, 2 bad command line, 3 invalid or missing input
(see :mod:`inference.errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from inference.errors import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, EXIT_USAGE, InputError, Remind2RegError
from remind2reg import __version__

log = logging.getLogger("remind2reg")

MODALITY_CHOICES = {"both": ("0001", "0002"), "ceT1": ("0001",), "T2": ("0002",)}
DEVICES = ["auto", "cpu", "cuda"]


def _env_choice(name: str, default: str, choices: list[str]) -> str:
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
        choices=["convex-adam", "identity", "niftyreg-rigid", "niftyreg-affine"],
        help="registration method (niftyreg-*: reg_aladin alone, the organisers' baseline family)",
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
    p.set_defaults(func=_run_register)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted fields on landmarks, as the challenge does")
    p.add_argument("--data", required=True, type=Path, help="dataset folder with images and landmarks")
    p.add_argument("--pred", required=True, type=Path, help="folder with disp_*.nii.gz")
    p.add_argument("--json", type=Path, help="write metrics JSON (official layout + extras)")
    p.add_argument("--csv", type=Path, help="write one CSV row per pair")
    p.add_argument("--modalities", default="both", choices=sorted(MODALITY_CHOICES), help="moving sequences")
    p.set_defaults(func=_run_evaluate)


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack", help="check the predicted fields against the input and zip a leaderboard submission"
    )
    p.add_argument("--input", required=True, type=Path, help="the input folder the fields were made from")
    p.add_argument("--pred", required=True, type=Path, help="folder with disp_*.nii.gz")
    p.add_argument("--out", required=True, type=Path, help="zip archive to write")
    p.add_argument("--modalities", default="both", choices=sorted(MODALITY_CHOICES), help="moving sequences")
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
        help="voxels per side; the field of view stays 128 mm (256 -> 0.5 mm)",
    )
    p.add_argument("--first-case", type=int, default=1, help="number of the first case (4 digits in names)")
    p.set_defaults(func=_run_synth)


def _resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise Remind2RegError("--device cuda was requested but no CUDA device is available")
    log.warning("No CUDA device available: running on the CPU")
    return "cpu"


def _run_register(args: argparse.Namespace) -> int:
    from inference.config import RegistrationConfig
    from inference.pipeline import register_folder

    config = RegistrationConfig.from_file(args.config) if args.config else RegistrationConfig()
    device = _resolve_device(args.device)
    register_folder(
        args.input,
        args.output,
        method=args.method,
        modalities=MODALITY_CHOICES[args.modalities],
        device=device,
        config=config,
    )
    return EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    from evaluation.evaluate import evaluate, write_report

    report = evaluate(args.data, args.pred, MODALITY_CHOICES[args.modalities])
    print(report.table())
    write_report(report, args.json, args.csv)
    return EXIT_OK


def _run_pack(args: argparse.Namespace) -> int:
    from evaluation.pack import pack_submission

    out = pack_submission(args.input, args.pred, args.out, MODALITY_CHOICES[args.modalities])
    print(f"wrote {out}")
    return EXIT_OK


def _run_synth(args: argparse.Namespace) -> int:
    from synthesis.generate import SynthConfig, generate_dataset

    config = SynthConfig(grid=args.grid)
    generate_dataset(
        args.out,
        n_cases=args.cases,
        source=args.source,
        seed=args.seed,
        config=config,
        shared_data=args.shared_data,
        first_case=args.first_case,
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
    _add_pack(sub)
    _add_synth(sub)
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
    except Remind2RegError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
