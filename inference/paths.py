"""Where the project's files are, installed or in a source checkout (torch-free).

Never relative to the working directory: a checkout is recognised by the ``pyproject.toml``
two levels above this file (``<checkout>/inference/paths.py``); an installed package lives in
``site-packages/remind2reg/inference/`` where there is none.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "REMIND2REG_WEIGHTS"
DEFAULT_WEIGHTS_NAME = "refiner_v2.pt"
CONTAINER_WEIGHTS = Path("/opt/remind2reg/weights")


def source_checkout() -> Path | None:
    """The repository root when the package runs from a source checkout, else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "inference").is_dir() else None


def default_weights_path() -> Path:
    """``$REMIND2REG_WEIGHTS`` (a file, or a folder holding ``refiner_v2.pt``), else the
    checkout's ``weights/refiner_v2.pt``, else the container's ``/opt/remind2reg/weights/refiner_v2.pt``."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        return p / DEFAULT_WEIGHTS_NAME if p.is_dir() else p
    checkout = source_checkout()
    if checkout is not None and (checkout / "weights" / DEFAULT_WEIGHTS_NAME).is_file():
        return checkout / "weights" / DEFAULT_WEIGHTS_NAME
    return CONTAINER_WEIGHTS / DEFAULT_WEIGHTS_NAME
