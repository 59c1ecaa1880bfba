"""The number checks every public function's arguments share: one answer to "is this a whole number" and
"is this a real number", so that a bool (an int to Python) or a string is refused alike everywhere."""

from __future__ import annotations

import numbers
from typing import Any


def is_whole(value: Any) -> bool:
    """An integer (NumPy's too), and not a bool (``True`` is an int to Python, but no tile or batch size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (int, float, Fraction, NumPy's too), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
