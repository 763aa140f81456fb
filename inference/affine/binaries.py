"""Locate the NiftyReg command-line tools (``reg_aladin``, ``reg_resample``, ``reg_f3d``, ...).

NiftyReg is installed by ``scripts/install_niftyreg.sh`` from the PyPI sdist
``niftyreg==1.5.70rc1``. The package puts its executables *inside* the Python package,
``<site-packages>/niftyreg/bin/`` (exposed as ``niftyreg.bin_path``); the environment's
``bin/`` only gets a ``niftyreg`` launcher script, not the ``reg_*`` tools.

Search order of :func:`niftyreg_executable`:

1. ``$REMIND2REG_NIFTYREG_DIR`` if set and non-empty. The override is authoritative: when
   it is set, the executable must be in that folder, otherwise the lookup fails (no silent
   fallback to another NiftyReg).
2. The ``bin/`` folder of the ``niftyreg`` package importable from this interpreter.
3. The folder of ``sys.executable`` (a venv's ``bin/``), symlinks not resolved.
4. ``shutil.which`` (the ``PATH``).

Importing this module is cheap: the ``niftyreg`` package is only looked up on call.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["NIFTYREG_DIR_ENV", "niftyreg_executable", "niftyreg_version"]

#: Environment variable naming a folder that holds the NiftyReg executables.
NIFTYREG_DIR_ENV = "REMIND2REG_NIFTYREG_DIR"

_INSTALL_HINT = "run scripts/install_niftyreg.sh (or `make install`)"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _candidate_in(folder: Path, name: str) -> Path | None:
    """``folder/name`` (or ``name.exe`` on Windows) if it is an executable file."""
    names = [name, f"{name}.exe"] if os.name == "nt" and not name.endswith(".exe") else [name]
    for candidate in names:
        path = folder / candidate
        if _is_executable(path):
            return path
    return None


def _package_bin_dir() -> Path | None:
    """``<site-packages>/niftyreg/bin`` of the installed ``niftyreg`` package, if any.

    Uses the import machinery's spec rather than importing the package, so nothing runs.
    """
    try:
        spec = importlib.util.find_spec("niftyreg")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bin"


def niftyreg_executable(name: str) -> Path:
    """Return the path of the NiftyReg executable ``name`` (e.g. ``"reg_aladin"``).

    See the module docstring for the search order.

    Raises:
        ValueError: ``name`` is empty or contains a path separator.
        FileNotFoundError: the executable was not found; the message names it, lists the
            places searched and says how to install NiftyReg.
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"expected a bare executable name such as 'reg_aladin', got {name!r}")

    override = os.environ.get(NIFTYREG_DIR_ENV, "")
    if override:
        found = _candidate_in(Path(override), name)
        if found is not None:
            return found
        raise FileNotFoundError(
            f"NiftyReg executable {name!r} not found in ${NIFTYREG_DIR_ENV}={override!r}; "
            f"fix or unset {NIFTYREG_DIR_ENV}, or {_INSTALL_HINT}."
        )

    searched: list[str] = []
    folders = [_package_bin_dir(), Path(sys.executable).parent]
    for folder in folders:
        if folder is None:
            continue
        searched.append(str(folder))
        found = _candidate_in(folder, name)
        if found is not None:
            return found

    on_path = shutil.which(name)
    searched.append("PATH")
    if on_path is not None:
        return Path(on_path)

    raise FileNotFoundError(
        f"NiftyReg executable {name!r} not found (searched: {', '.join(searched)}); "
        f"{_INSTALL_HINT}, or set {NIFTYREG_DIR_ENV} to the folder holding it."
    )


def niftyreg_version() -> str:
    """Return the NiftyReg version reported by ``reg_aladin -v`` (e.g. ``"1.5.70"``).

    Raises:
        FileNotFoundError: ``reg_aladin`` was not found (see :func:`niftyreg_executable`).
        RuntimeError: ``reg_aladin -v`` failed or printed nothing.
    """
    exe = niftyreg_executable("reg_aladin")
    proc = subprocess.run([str(exe), "-v"], capture_output=True, text=True, timeout=60, check=False)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"'{exe} -v' failed (exit code {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return lines[-1]
