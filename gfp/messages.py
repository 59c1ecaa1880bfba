"""Error messages in one line, for commands and UIs that print an error as a line."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def headline(err: BaseException) -> str:
    """:func:`first_line` without the "Looked in:" that opens a weights error's list of places searched."""
    return first_line(err).removesuffix("Looked in:").strip()


def load_failure(err: BaseException) -> str:
    """Why ``torch.load`` failed, in one short line: the zip reader's error ("PytorchStreamReader failed
    reading zip archive: failed finding central directory. This is an internal miniz error. If you are
    seeing this error, ...", a paragraph) is cut to its first sentence and says what it means."""
    text = first_line(err)
    if text.startswith("PytorchStreamReader failed"):
        return text.split(". ")[0].removesuffix(".") + " (the file is cut short or damaged)"
    return text
