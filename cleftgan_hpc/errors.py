"""One exception family: every error a user can cause is a CleftGanError with a clear message."""

from __future__ import annotations


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
