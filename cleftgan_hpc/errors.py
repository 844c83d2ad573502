"""One exception family: every error a user can cause is a CleftGanError with a clear message."""

from __future__ import annotations

import re

MAX_MESSAGE = 400
"""Characters of one spec problem's message."""


class CleftGanError(Exception):
    """Base of all errors the CLI reports as one clear line (never a traceback)."""


class FieldError(ValueError):
    """Raised by a spec model's validator about particular fields: ``loc`` (relative to the
    model) lets the spec reader point at the field's line instead of the model's."""

    def __init__(self, message: str, *loc: str | int) -> None:
        super().__init__(message)
        self.loc = loc


class SpecError(CleftGanError):
    """A job spec is invalid. Holds every problem found, each with file, line and column."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SpecProblem:
    """One problem in a spec: where it is (file:line:col), which field, and what is wrong."""

    __slots__ = ("file", "line", "col", "field", "message")

    def __init__(self, file: str, line: int, col: int, field: str, message: str) -> None:
        if len(message) > MAX_MESSAGE:  # a message quoting a huge value (a stage name, a key) is cut short
            message = message[: MAX_MESSAGE - 3] + "..."
        if len(field) > 200:
            field = field[:197] + "..."
        self.file, self.line, self.col, self.field, self.message = file, line, col, field, message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"SpecProblem({str(self)!r})"


class StorageError(CleftGanError):
    """An object store operation failed (unreachable, denied, malformed key...)."""


class ObjectNotFound(StorageError):
    """The requested key does not exist in the store."""


class ObjectExists(StorageError):
    """A create-only put found the key already present."""


class LaunchError(CleftGanError):
    """A backend could not start, track or cancel a stage."""


class StageFailed(CleftGanError):
    """A stage ran and failed; its status record holds the reason."""


class DataError(CleftGanError):
    """Input data (images, landmarks, labels, datasets) is unusable."""


class UnsafePickleError(CleftGanError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


class NetworkFormatError(CleftGanError):
    """A network file is missing tensors, has mis-shaped ones, or is not a known format."""


# -- echoing values in error messages ---------------------------------------------------------
# An error names what it received, but a log or a terminal is no place for a credential or a
# 50 MB scalar: values are cut short, and values that look like secrets are not shown at all.

MAX_SHOWN = 60
"""Characters of a value an error message shows."""

SECRET_NAME = re.compile(r"(?i)(secret|passw|token|credential|api_?key|access_?key|private_?key|session_?key|auth)")
"""Field or variable names whose values are credentials."""

SECRET_VALUE = re.compile(
    r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:ghp|gho|ghs|github_pat|glpat|xox[abp]|hf)_[A-Za-z0-9_]{16,}"  # GitHub, GitLab, Slack, HF tokens
)
"""Values that look like credentials whatever field they sit in."""


def looks_secret(value: object) -> bool:
    return isinstance(value, str) and bool(SECRET_VALUE.search(value))


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` for an error message: at most ``limit`` characters, and never a credential."""
    if looks_secret(value):
        return "<a value that looks like a credential, not shown>"
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else type(value).__name__
    return f"{text[: limit - 3]}... ({size})"
