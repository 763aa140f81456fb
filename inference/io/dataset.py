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

from inference.errors import InputError

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


def _resolve(root: Path, entry: str, json_path: Path) -> Path:
    path = (root / entry).resolve()
    if not path.is_file():
        raise InputError(f"the dataset json lists {entry!r}, which does not exist", path=json_path)
    return path


def _pairs_from_json(root: Path, json_path: Path) -> list[RegistrationPair]:
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the dataset json ({exc})", path=json_path) from exc
    for key in ("registration_test", "registration_val"):
        entries = meta.get(key) or []
        if entries:
            log.info("Using %d pairs from %s in %s", len(entries), key, json_path.name)
            try:
                return [
                    RegistrationPair(
                        fixed=_resolve(root, e["fixed"], json_path),
                        moving=_resolve(root, e["moving"], json_path),
                    )
                    for e in entries
                ]
            except (KeyError, TypeError) as exc:
                raise InputError(f"malformed entry in {key!r} ({exc})", path=json_path) from exc
    images = [_resolve(root, e["image"], json_path) for e in meta.get("training", [])]
    log.info(
        "No registration_test/val in %s: pairing the %d training images",
        json_path.name,
        len(images),
    )
    return _pair_images(images)


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
