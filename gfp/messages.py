"""Error messages in one line, for commands and UIs that print an error as a line."""

from __future__ import annotations

import pickle
import string
import unicodedata
from collections.abc import Mapping
from functools import partial

_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})
"""Unicode categories of the characters that break or garble a printed line (newline, tab, escape ...)."""


class OptionError(ValueError):
    """An option's value refused, said in the options' field names (``faces must be ...``). The message is
    ``template`` with each ``{field}`` an option's name and the other placeholders filled from ``values``
    (a value is never read as a template: a user's ``{`` stays as typed); :meth:`said` gives it in a front
    end's own names for the options (the CLI's flags, the app's controls), so no front end rewrites a
    message, and a message is written once, where the value is refused."""

    def __init__(self, template: str, **values: object) -> None:
        placeholders = (field for _, field, _, _ in string.Formatter().parse(template) if field)
        self.template, self.values = template, values
        self.fields = tuple(dict.fromkeys(f for f in placeholders if f not in values))
        """The options the error is about, in the order the message names them."""
        super().__init__(self.said({}))

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled (a worker process's error) as made: from the template and values, not the message; a value
        that cannot be pickled (a generator given as ``faces``) as the text of its repr, which the message
        shows alike."""
        values = {name: _picklable(value) for name, value in self.values.items()}
        return (partial(type(self), self.template, **values), ())

    def said(self, names: Mapping[str, str]) -> str:
        """The message with each option in ``names``' words for it (an option it lacks by its field name)."""
        return self.template.format_map(
            {field: names.get(field, field) for field in self.fields} | self.values
        )


class _Shown(str):
    """A value's repr standing in for the value (see :meth:`OptionError.__reduce__`): ``{value!r}`` and
    ``{value}`` show it as the value's ``!r`` did."""

    def __repr__(self) -> str:
        return str(self)


def _picklable(value: object) -> object:
    try:
        pickle.dumps(value)
    except Exception:  # (what cannot be pickled fails in many ways)
        return _Shown(repr(value))
    return value


def is_plain(name: str) -> bool:
    """Whether ``name`` (a file name or path) holds no control character (a newline, a tab, an escape)."""
    return not any(unicodedata.category(char) in _LINE_BREAKING for char in name)


def shown(name: str) -> str:
    """``name`` as a message shows it: as it is, or as Python's repr of it when it holds a control
    character, so that every message stays one line and says what the name holds."""
    return name if is_plain(name) else repr(name)


def in_words(err: BaseException, options: Mapping[str, str] | None = None) -> str:
    """``err``'s message; an :class:`OptionError`'s with its options in ``options``' words for them (a front
    end's: see :meth:`OptionError.said`)."""
    return err.said(options) if options is not None and isinstance(err, OptionError) else str(err)


def first_line(err: BaseException, name: str | None = None, options: Mapping[str, str] | None = None) -> str:
    """The first line of an error's message (its type's name when it has none); ``name``, a file the
    message may name (an image or video error begins with it), is :func:`shown`, so that a newline in it
    does not end the line there; its options are said in ``options``' words (:func:`in_words`)."""
    text = in_words(err, options)
    text = text if name is None else text.replace(name, shown(name))
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
