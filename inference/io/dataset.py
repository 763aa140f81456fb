"""Finding (fixed, moving) registration pairs in a ReMIND2Reg-formatted folder.

Two layouts are accepted:

* a dataset root holding ``ReMIND2Reg_dataset.json`` (Learn2Reg schema): the pairs are
  ``registration_test`` if present and non-empty, else ``registration_val``, else every
  ``_0001``/``_0002`` image of the ``training`` list paired with its case's ``_0000``;
* a bare folder of ``ReMIND2Reg_<case>_<mod>.nii.gz`` files, flat or under
  ``imagesTr/``/``imagesTs/`` (the container's ``/input``): every ``_0001``/``_0002`` image is
  paired with its case's ``_0000``.

The ultrasound ``_0000`` is always the fixed image.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.nifti import read_header

log = logging.getLogger(__name__)

FIXED_MODALITY = "0000"
MOVING_MODALITIES: dict[str, str] = {"0001": "ceT1", "0002": "T2"}
DATASET_JSON = "ReMIND2Reg_dataset.json"
IMAGE_DIRS = ("imagesTr", "imagesTs", "imagesVal")
_NAME = re.compile(r"^(?P<task>.+)_(?P<case>\d{4})_(?P<mod>\d{4})\.nii\.gz$")


@dataclass(frozen=True)
class ImageName:
    """The parts of a Learn2Reg image file name ``<task>_<case>_<mod>.nii.gz``."""

    task: str
    case: str
    modality: str

    @classmethod
    def parse(cls, path: str | Path) -> ImageName:
        match = _NAME.match(Path(path).name)
        if match is None:
            raise InputError(
                "file name does not follow <task>_<case>_<modality>.nii.gz "
                "(e.g. ReMIND2Reg_0099_0001.nii.gz)",
                path=path,
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
        f, m = self.fixed_name, self.moving_name
        return f"disp_{f.case}_{f.modality}_{m.case}_{m.modality}.nii.gz"


def _resolve(root: Path, entry: object, json_path: Path) -> Path:
    if not isinstance(entry, str):
        raise InputError(f"the dataset json has {entry!r} where a file path is expected", path=json_path)
    path = (root / entry).resolve()
    if not path.is_file():
        raise InputError(f"the dataset json lists {entry!r}, which does not exist", path=json_path)
    ImageName.parse(path)  # a listed file must follow the naming convention too
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


def check_declared_shape(pairs: list[RegistrationPair], meta: dict, json_path: Path) -> None:
    """Raise :class:`InputError` when an ultrasound's shape disagrees with ``tensorImageShape``.

    Only headers are read. The json's shape of modality ``"0"`` (the US) is what the challenge
    declares for every fixed image; the fixed grid is the output grid, so a disagreement means
    the json and the files are not the same dataset.
    """
    declared = (meta.get("tensorImageShape") or {}).get("0") if isinstance(meta, dict) else None
    if not isinstance(declared, list) or len(declared) != 3:
        return
    for fixed in sorted({p.fixed for p in pairs}):
        case = ImageName.parse(fixed).case
        shape, _ = read_header(fixed, case)
        if tuple(shape[:3]) != tuple(declared):
            raise InputError(
                f"shape {tuple(shape)} disagrees with tensorImageShape {declared} in {json_path.name}",
                path=fixed,
                case=case,
            )


def _pairs_from_json(root: Path, json_path: Path) -> list[RegistrationPair]:
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
            log.info("Using %d pairs from %s in %s", len(entries), key, json_path.name)
            if not isinstance(entries, list):
                raise InputError(f"{key!r} is not a list", path=json_path)
            pairs = [_json_pair(root, e, key, json_path) for e in entries]
            check_declared_shape(pairs, meta, json_path)
            return pairs
    training = meta.get("training") or []
    if not isinstance(training, list) or not all(isinstance(e, dict) and "image" in e for e in training):
        raise InputError("malformed 'training' list (expected [{\"image\": ...}, ...])", path=json_path)
    images = [_resolve(root, e["image"], json_path) for e in training]
    log.info(
        "No registration_test/val in %s: pairing the %d training images",
        json_path.name,
        len(images),
    )
    pairs = _pair_images(images)
    check_declared_shape(pairs, meta, json_path)
    return pairs


def _pair_images(images: list[Path]) -> list[RegistrationPair]:
    """Pair every moving image with the ``_0000`` image of its case."""
    fixed_by_case: dict[tuple[str, str], Path] = {}
    moving: list[tuple[ImageName, Path]] = []
    for path in images:
        name = ImageName.parse(path)
        if name.modality == FIXED_MODALITY:
            fixed_by_case[(name.task, name.case)] = path
        elif name.modality in MOVING_MODALITIES:
            moving.append((name, path))
        else:
            log.warning("Ignoring %s: unknown modality %s", path, name.modality)
    pairs = []
    for name, path in sorted(moving, key=lambda item: (item[0].case, item[0].modality)):
        fixed = fixed_by_case.get((name.task, name.case))
        if fixed is None:
            raise InputError(
                f"no ultrasound image (_{FIXED_MODALITY}) for this case", path=path, case=name.case
            )
        pairs.append(RegistrationPair(fixed=fixed, moving=path))
    return pairs


def find_pairs(root: str | Path, modalities: tuple[str, ...] = ("0001", "0002")) -> list[RegistrationPair]:
    """All registration pairs under ``root`` whose moving modality is in ``modalities``.

    Raises :class:`InputError` when the folder does not exist or holds no pair.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("input folder not found", path=root)
    json_path = root / DATASET_JSON
    if json_path.is_file():
        pairs = _pairs_from_json(root, json_path)
    else:
        images = sorted(p for p in root.glob("*.nii.gz") if _NAME.match(p.name))
        for sub in IMAGE_DIRS:
            images += sorted(p for p in (root / sub).glob("*.nii.gz") if _NAME.match(p.name))
        pairs = _pair_images(images)
    pairs = [p for p in pairs if p.moving_name.modality in modalities]
    if not pairs:
        wanted = ", ".join(f"_{m}" for m in modalities)
        raise InputError(
            f"no registration pair found (looked for {wanted} moving images with a _0000 "
            f"ultrasound, flat or under {'/'.join(IMAGE_DIRS)}, or a {DATASET_JSON})",
            path=root,
        )
    return pairs


def landmark_path(image: str | Path, root: str | Path | None = None) -> Path | None:
    """The landmark file of an image, or None if there is none.

    The challenge's rule: replace ``images`` by ``landmarks`` in the path and ``.nii.gz`` by
    ``.csv`` (``imagesTr/X.nii.gz`` -> ``landmarksTr/X.csv``). For flat folders, a ``.csv``
    beside the image or under ``root/landmarks*/`` is accepted too.
    """
    image = Path(image)
    stem = image.name[: -len(".nii.gz")]
    candidates = [image.parent.parent / image.parent.name.replace("images", "landmarks") / f"{stem}.csv"]
    candidates.append(image.with_name(f"{stem}.csv"))
    if root is not None:
        candidates += sorted(Path(root).glob(f"landmarks*/{stem}.csv"))
    return next((c for c in candidates if c.is_file()), None)
