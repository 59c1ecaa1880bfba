"""Error messages in one line, for commands and UIs that print an error as a line."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def headline(err: BaseException) -> str:
    """:func:`first_line` without the "Looked in:" that opens a weights error's list of places searched."""
    return first_line(err).removesuffix("Looked in:").strip()
