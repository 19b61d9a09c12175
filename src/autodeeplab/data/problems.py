"""What is wrong with a dataset: one :class:`DataProblem` per broken thing, one line each.

``autodeeplab data check`` collects every problem of a dataset into a list; training and search meet the
same problems lazily, one sample at a time, as a :class:`DataProblemError` whose message is exactly
``str(problem)``.
So the user sees the same words whichever way the problem was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autodeeplab.errors import DataError

# The marker PyTorch puts in the message of an exception that it re-raises from a DataLoader worker.
_WORKER_TRACEBACK_MARKER = "\nOriginal Traceback"


@dataclass(frozen=True)
class DataProblem:
    """One problem of a dataset: the file (or folder) it concerns and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def problem(path: str | Path, message: str) -> DataProblem:
    """A :class:`DataProblem` for ``path`` (any path-like; stored as text)."""
    return DataProblem(str(path), message)


class DataProblemError(DataError):
    """A :class:`DataError` that carries the :class:`DataProblem` it reports.

    A DataLoader worker that meets the error sends it to the main process, where PyTorch rebuilds it by
    calling this class with a multi-line text ("Caught ... Original Traceback ..."). The constructor
    recognises that text and keeps only the original one-line message, so the CLI still prints one line that
    names the file.
    """

    def __init__(self, problem_or_message: DataProblem | str) -> None:
        if isinstance(problem_or_message, DataProblem):
            found = problem_or_message
        else:
            found = DataProblem("", _original_message(str(problem_or_message)))
        self.problem = found
        super().__init__(str(found))


def refuse_problems(found: list[DataProblem]) -> None:
    """Raise the first of ``found`` (if any) as a :class:`DataProblemError`, with the count of the others
    and where to list them all."""
    if not found:
        return
    first, more = found[0], len(found) - 1
    if more:
        hint = f" (and {more} more problems; run 'autodeeplab data check' to list them)"
        first = DataProblem(first.path, first.message + hint)
    raise DataProblemError(first)


def _original_message(text: str) -> str:
    """The one-line message inside a re-raised worker traceback, or ``text`` itself."""
    if _WORKER_TRACEBACK_MARKER not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    head, sep, message = last.partition(": ")
    # The traceback's last line is "<module>.DataProblemError: <message>".
    return message if sep and head.endswith(DataProblemError.__name__) else last
