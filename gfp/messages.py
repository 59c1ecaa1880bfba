"""Error messages in one line, for commands and UIs that print an error as a line."""

from __future__ import annotations

import unicodedata

_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})
"""Unicode categories of the characters that break or garble a printed line (newline, tab, escape ...)."""


def is_plain(name: str) -> bool:
    """Whether ``name`` (a file name or path) holds no control character (a newline, a tab, an escape)."""
    return not any(unicodedata.category(char) in _LINE_BREAKING for char in name)


def shown(name: str) -> str:
    """``name`` as a message shows it: as it is, or as Python's repr of it when it holds a control
    character, so that every message stays one line and says what the name holds."""
    return name if is_plain(name) else repr(name)


def first_line(err: BaseException, name: str | None = None) -> str:
    """The first line of an error's message (its type's name when it has none); ``name``, a file the
    message may name (an image or video error begins with it), is :func:`shown`, so that a newline in it
    does not end the line there."""
    text = str(err) if name is None else str(err).replace(name, shown(name))
    lines = text.strip().splitlines()
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
