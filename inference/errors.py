"""Exceptions with messages that name the case and the file, and the CLI exit codes."""

from __future__ import annotations

from pathlib import Path

# Exit codes of the ``remind2reg`` command (documented in README.md).
EXIT_OK = 0
EXIT_FAILURE = 1  # a registration or evaluation step failed
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_INPUT = 3  # the input folder or a file in it is missing, unreadable or invalid


class Remind2RegError(Exception):
    """Base class of the errors this tool raises on purpose."""


class UsageError(Remind2RegError):
    """The command asks for something that cannot be done as asked (exit code 2)."""


class InputError(Remind2RegError):
    """An input file or folder is missing, unreadable or invalid.

    The message always names the file and, when known, the case.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, case: str | None = None):
        parts = []
        if case is not None:
            parts.append(f"case {case}")
        if path is not None:
            parts.append(f"file {path}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.case = case

    def with_case(self, case: str | None) -> InputError:
        """The same error naming ``case`` (when it named none)."""
        return (
            self
            if self.case is not None or case is None
            else InputError(self.message, path=self.path, case=case)
        )
