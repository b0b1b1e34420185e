"""User-facing errors: each reaches the user as one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

from collections.abc import Iterable

EXIT_FAILURE = 1
EXIT_USAGE = 2


class BakegenError(Exception):
    """An error the user can act on. `str()` is the whole message; `hint` is an optional second clause."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(BakegenError):
    """Bad command-line input: exit code 2, like argparse."""

    exit_code = EXIT_USAGE


class DescriptorError(BakegenError):
    """One or more problems in distribution descriptors, reported together, sorted and de-duplicated."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("; ".join(self.problems))
