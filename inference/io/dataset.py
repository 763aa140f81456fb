"""Finding (fixed, moving) registration pairs in a ReMIND2Reg-formatted folder.

Two layouts are accepted:

* a dataset root holding ``ReMIND2Reg_dataset.json`` (Learn2Reg schema): the pairs are
  ``registration_test`` if present and non-empty, else ``registration_val``, else every
  ``_0001``/``_0002`` image of the ``training`` list paired with its case's ``_0000``;
* a bare folder of ``ReMIND2Reg_<case>_<mod>.nii.gz`` files, flat or under
  ``imagesTr/``/``imagesTs/``/``imagesVal/`` (the container's ``/input``): every
  ``_0001``/``_0002`` image is paired with its case's ``_0000``.

Names are matched strictly: ``ReMIND2Reg_`` + a 4-digit case + ``_0000``/``_0001``/``_0002``
+ ``.nii.gz``. Any other ``.nii.gz`` file is ignored with a log line naming it (an
``old_ReMIND2Reg_0003_0000.nii.gz`` beside case 0003 must not pass for it). The ultrasound
``_0000`` is always the fixed image.

:func:`discover` returns the pairs and, separately, every *problem* that concerns one pair
only (a json entry naming a missing file, a moving image without its ``_0000``, two files
claiming one output name): the batch then fails those pairs alone. :func:`find_pairs` is
the strict form that raises on any problem.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.nifti import read_header

log = logging.getLogger(__name__)

TASK = "ReMIND2Reg"
FIXED_MODALITY = "0000"
MOVING_MODALITIES: dict[str, str] = {"0001": "ceT1", "0002": "T2"}
DATASET_JSON = "ReMIND2Reg_dataset.json"
IMAGE_DIRS = ("imagesTr", "imagesTs", "imagesVal")
_NAME = re.compile(
    rf"^(?P<task>{TASK})_(?P<case>\d{{4}})_(?P<mod>{FIXED_MODALITY}|{'|'.join(MOVING_MODALITIES)})\.nii\.gz$"
)
NAME_RULE = f"{TASK}_<4-digit case>_<{FIXED_MODALITY}|{'|'.join(MOVING_MODALITIES)}>.nii.gz"


@dataclass(frozen=True)
class ImageName:
    """The parts of an image file name ``ReMIND2Reg_<case>_<mod>.nii.gz``."""

    task: str
    case: str
    modality: str

    @classmethod
    def parse(cls, path: str | Path) -> ImageName:
        match = _NAME.match(Path(path).name)
        if match is None:
            raise InputError(
                f"file name does not follow {NAME_RULE} (e.g. ReMIND2Reg_0099_0001.nii.gz)", path=path
            )
        return cls(task=match["task"], case=match["case"], modality=match["mod"])


@dataclass(frozen=True)
class RegistrationPair:
    """One registration task: warp ``moving`` onto ``fixed``."""

    fixed: Path
    moving: Path

    @property
    def fixed_name(self) -> ImageName:
        return ImageName.parse(self.fixed)

    @property
    def moving_name(self) -> ImageName:
        return ImageName.parse(self.moving)

    @property
    def case(self) -> str:
        return self.fixed_name.case

    @property
    def key(self) -> str:
        """Case key as the official evaluator prints it: ``0099_0000<--0099_0001``."""
        f, m = self.fixed_name, self.moving_name
        return f"{f.case}_{f.modality}<--{m.case}_{m.modality}"

    @property
    def label(self) -> str:
        """Short human label: ``0099 ceT1``."""
        m = self.moving_name
        return f"{m.case} {MOVING_MODALITIES.get(m.modality, m.modality)}"

    @property
    def output_name(self) -> str:
        """Challenge file name ``disp_<fixcase>_<fixmod>_<movcase>_<movmod>.nii.gz``."""
        return output_name(self.fixed_name, self.moving_name)


def output_name(fixed: ImageName, moving: ImageName) -> str:
    return f"disp_{fixed.case}_{fixed.modality}_{moving.case}_{moving.modality}.nii.gz"


@dataclass(frozen=True)
class PairProblem:
    """A pair that cannot be registered, found while reading the folder.

    ``output``: the file it would have had (when the names say so); ``fixed``: its US, when
    one is known (the batch needs its grid to write an identity field); ``modality``: its moving
    sequence, when known.
    """

    error: InputError
    case: str | None = None
    output: str | None = None
    fixed: Path | None = None
    modality: str | None = None


@dataclass
class Discovery:
    """The pairs of a folder and the problems of single pairs (see the module docstring)."""

    pairs: list[RegistrationPair] = field(default_factory=list)
    problems: list[PairProblem] = field(default_factory=list)

    def select(self, modalities: tuple[str, ...]) -> Discovery:
        """Only the pairs (and problems) whose moving sequence is in ``modalities``."""
        return Discovery(
            [p for p in self.pairs if p.moving_name.modality in modalities],
            [q for q in self.problems if q.modality is None or q.modality in modalities],
        )


def _problem(message: str, path: Path | str | None, fixed: ImageName | None = None,
             moving: ImageName | None = None, fixed_path: Path | None = None) -> PairProblem:  # fmt: skip
    case = (moving or fixed).case if (moving or fixed) else None
    out = output_name(fixed, moving) if fixed and moving else None
    return PairProblem(
        InputError(message, path=path, case=case), case, out, fixed_path, moving.modality if moving else None
    )


def _parse(path: Path) -> ImageName | None:
    match = _NAME.match(path.name)
    return ImageName(match["task"], match["case"], match["mod"]) if match else None


def _resolve(root: Path, entry: object, json_path: Path) -> Path:
    if not isinstance(entry, str):
        raise InputError(f"the dataset json has {entry!r} where a file path is expected", path=json_path)
    path = (root / entry).resolve()
    ImageName.parse(path)  # a listed file must follow the naming convention
    if not path.is_file():
        raise InputError(f"the dataset json lists {entry!r}, which does not exist", path=json_path)
    return path


def _json_pair(root: Path, entry: object, key: str, json_path: Path) -> RegistrationPair:
    """One ``{"fixed": ..., "moving": ...}`` entry, checked against the files and the naming rules."""
    if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
        raise InputError(f"malformed entry in {key!r}: {entry!r} (expected fixed and moving)", path=json_path)
    pair = RegistrationPair(
        fixed=_resolve(root, entry["fixed"], json_path), moving=_resolve(root, entry["moving"], json_path)
    )
    fixed, moving = pair.fixed_name, pair.moving_name
    if fixed.modality != FIXED_MODALITY:
        raise InputError(
            f"{key} lists {pair.fixed.name} as fixed; the fixed image must be the ultrasound _{FIXED_MODALITY}",
            path=json_path,
            case=fixed.case,
        )
    if moving.modality not in MOVING_MODALITIES:
        raise InputError(
            f"{key} lists {pair.moving.name} as moving; expected a _0001 (ceT1) or _0002 (T2) image",
            path=json_path,
            case=moving.case,
        )
    if fixed.case != moving.case:
        log.warning(
            "%s pairs images of two cases: %s and %s", json_path.name, pair.fixed.name, pair.moving.name
        )
    return pair


def _names_of(entry: object) -> tuple[ImageName | None, ImageName | None]:
    """The parsed names of a json entry's files, where they parse (for naming its problem)."""
    if not isinstance(entry, dict):
        return None, None
    parts = [
        _parse(Path(v)) if isinstance(v, str) else None for v in (entry.get("fixed"), entry.get("moving"))
    ]
    return parts[0], parts[1]


def _check_declared_counts(meta: dict, json_path: Path) -> None:
    """Warn where the json's ``num*`` counts disagree with its own lists."""
    for count_key, list_key in (
        ("numTraining", "training"),
        ("numRegistration_val", "registration_val"),
        ("numRegistration_test", "registration_test"),
    ):
        declared, listed = meta.get(count_key), meta.get(list_key)
        if isinstance(declared, int) and isinstance(listed, list) and declared != len(listed):
            log.warning(
                "%s: %s is %d but %s lists %d entries",
                json_path.name,
                count_key,
                declared,
                list_key,
                len(listed),
            )


def _check_declared_shape(found: Discovery, meta: dict, json_path: Path) -> Discovery:
    """Move the pairs whose ultrasound's shape disagrees with ``tensorImageShape`` to the problems.

    Only headers are read. The json's shape of modality ``"0"`` (the US) is what the challenge
    declares for every fixed image; the fixed grid is the output grid, so a disagreement means
    the json and the files are not the same dataset.
    """
    declared = (meta.get("tensorImageShape") or {}).get("0")
    if not isinstance(declared, list) or len(declared) != 3:
        return found
    out = Discovery(problems=list(found.problems))
    for pair in found.pairs:
        shape, _ = read_header(pair.fixed, pair.case)
        if tuple(shape[:3]) == tuple(declared):
            out.pairs.append(pair)
            continue
        message = f"shape {tuple(shape)} disagrees with tensorImageShape {declared} in {json_path.name}"
        error = InputError(message, path=pair.fixed, case=pair.case)
        out.problems.append(PairProblem(error, pair.case, pair.output_name, None, pair.moving_name.modality))
    return out


def _from_json_entries(root: Path, entries: list, key: str, json_path: Path) -> Discovery:
    found = Discovery()
    for entry in entries:
        try:
            found.pairs.append(_json_pair(root, entry, key, json_path))
        except InputError as exc:
            fixed, moving = _names_of(entry)
            case = (moving or fixed).case if (moving or fixed) else None
            valid = (
                fixed and moving and fixed.modality == FIXED_MODALITY and moving.modality in MOVING_MODALITIES
            )
            out = output_name(fixed, moving) if valid else None
            modality = moving.modality if moving and moving.modality in MOVING_MODALITIES else None
            found.problems.append(PairProblem(exc.with_case(case), case, out, None, modality))
    return found


def _discover_json(root: Path, json_path: Path) -> Discovery:
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the dataset json ({exc})", path=json_path) from exc
    if not isinstance(meta, dict):
        raise InputError("the dataset json is not an object with Learn2Reg keys", path=json_path)
    _check_declared_counts(meta, json_path)
    for key in ("registration_test", "registration_val"):
        entries = meta.get(key) or []
        if entries:
            if not isinstance(entries, list):
                raise InputError(f"{key!r} is not a list", path=json_path)
            log.info("Using %d pairs from %s in %s", len(entries), key, json_path.name)
            return _check_declared_shape(_from_json_entries(root, entries, key, json_path), meta, json_path)
    training = meta.get("training") or []
    if not isinstance(training, list) or not all(isinstance(e, dict) and "image" in e for e in training):
        raise InputError("malformed 'training' list (expected [{\"image\": ...}, ...])", path=json_path)
    images, unresolved = [], []
    for entry in training:
        try:
            images.append(_resolve(root, entry["image"], json_path))
        except InputError as exc:
            name = _parse(Path(entry["image"])) if isinstance(entry["image"], str) else None
            moving = name if name is not None and name.modality != FIXED_MODALITY else None
            out = output_name(ImageName(TASK, name.case, FIXED_MODALITY), moving) if moving else None
            case = name.case if name else None
            modality = moving.modality if moving else None
            unresolved.append(PairProblem(exc.with_case(case), case, out, None, modality))
    log.info("No registration_test/val in %s: pairing the %d training images", json_path.name, len(images))
    found = _check_declared_shape(_pair_images(images), meta, json_path)
    found.problems = unresolved + found.problems
    return found


def _pair_images(images: list[Path]) -> Discovery:
    """Pair every moving image with the ``_0000`` image of its case; one file per (case, modality)."""
    by_key: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in images:
        name = ImageName.parse(path)
        by_key[(name.case, name.modality)].append(path)
    found = Discovery()
    for (case, mod), paths in sorted(by_key.items()):
        if mod == FIXED_MODALITY:
            continue
        moving = ImageName(TASK, case, mod)
        fixed_paths = by_key.get((case, FIXED_MODALITY), [])
        fixed = ImageName(TASK, case, FIXED_MODALITY)
        if len(paths) > 1 or len(fixed_paths) > 1:
            clash = paths if len(paths) > 1 else fixed_paths
            files = ", ".join(str(p) for p in clash)
            us = fixed_paths[0] if len(fixed_paths) == 1 else None
            found.problems.append(
                _problem(
                    f"two files claim {output_name(fixed, moving)}: {files}; keep one",
                    clash[0],
                    fixed,
                    moving,
                    us,
                )
            )
        elif not fixed_paths:
            found.problems.append(
                _problem(f"no ultrasound image (_{FIXED_MODALITY}) for this case", paths[0], fixed, moving)
            )
        else:
            found.pairs.append(RegistrationPair(fixed=fixed_paths[0], moving=paths[0]))
    return found


def _folder_images(root: Path) -> list[Path]:
    """The image files of a bare folder (flat and under IMAGE_DIRS); others are logged and ignored."""
    images = []
    for folder in (root, *(root / sub for sub in IMAGE_DIRS)):
        for path in sorted(folder.glob("*.nii.gz")):
            if _NAME.match(path.name):
                images.append(path)
            else:
                log.warning("Ignoring %s: not a %s name", path, NAME_RULE)
    return images


def discover(root: str | Path, modalities: tuple[str, ...] = ("0001", "0002")) -> Discovery:
    """The pairs under ``root`` whose moving modality is in ``modalities``, and the problems of
    single pairs. Raises :class:`InputError` when the folder does not exist, its dataset json is
    unreadable, or it holds neither a pair nor a problem."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("input folder not found", path=root)
    json_path = root / DATASET_JSON
    found = _discover_json(root, json_path) if json_path.is_file() else _pair_images(_folder_images(root))
    found = found.select(modalities)
    if not found.pairs and not found.problems:
        wanted = ", ".join(f"_{m}" for m in modalities)
        raise InputError(
            f"no registration pair found (looked for {wanted} moving images with a _0000 "
            f"ultrasound, flat or under {'/'.join(IMAGE_DIRS)}, or a {DATASET_JSON})",
            path=root,
        )
    return found


def find_pairs(root: str | Path, modalities: tuple[str, ...] = ("0001", "0002")) -> list[RegistrationPair]:
    """All registration pairs under ``root`` (:func:`discover`); raises :class:`InputError` on
    the first problem (for tools that need every pair: ``pack``, benchmarks)."""
    found = discover(root, modalities)
    if found.problems:
        raise found.problems[0].error
    return found.pairs


def image_stem(path: str | Path) -> str:
    """An image's file name without ``.nii.gz`` (the name its landmarks, its initial transform and
    its exported files are named after)."""
    return Path(path).name.removesuffix(".nii.gz")


def landmark_path(image: str | Path, root: str | Path | None = None) -> Path | None:
    """The landmark file of an image, or None if there is none.

    The challenge's rule: replace ``images`` by ``landmarks`` in the path and ``.nii.gz`` by
    ``.csv`` (``imagesTr/X.nii.gz`` -> ``landmarksTr/X.csv``). For flat folders, a ``.csv``
    beside the image or under ``root/landmarks*/`` is accepted too.
    """
    image = Path(image)
    stem = image_stem(image)
    candidates = [image.parent.parent / image.parent.name.replace("images", "landmarks") / f"{stem}.csv"]
    candidates.append(image.with_name(f"{stem}.csv"))
    if root is not None:
        candidates += sorted(Path(root).glob(f"landmarks*/{stem}.csv"))
    return next((c for c in candidates if c.is_file()), None)
