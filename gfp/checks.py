"""The checks every public function's arguments share: one answer to "is this a whole number", "is this a
real number" and "is this a bool", so that a bool (an int to Python) or a string is refused alike
everywhere, and NumPy's scalars pass where Python's do."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_whole(value: Any) -> bool:
    """An integer (NumPy's too), and not a bool (``True`` is an int to Python, but no tile or batch size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (int, float, Fraction, NumPy's too), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_bool(value: Any) -> bool:
    """True or False, NumPy's too (what an array's element or comparison gives), not 0, 1 or a string."""
    return isinstance(value, bool | np.bool_)
