"""Validation of configuration values with one-line ``ValueError`` messages naming the field.

``True`` is an ``int`` in Python; every check here refuses booleans where a number is meant, so ``classes: true``
is an error instead of one class.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (bools excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` if it is an integer >= 1 (or None where allowed), else a ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number{' or null' if allow_none else ''}, got {value!r}")
    return float(value)


def non_negative_number(name: str, value: Any) -> float:
    if not is_number(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


SEED_LIMIT = 2**64  # torch.manual_seed takes seeds below it, numpy's default_rng no negative one


def is_seed(value: Any) -> bool:
    return is_int(value) and 0 <= value < SEED_LIMIT


def seed(name: str, value: Any) -> int:
    """``value`` if it is a seed every generator here takes (an integer in [0, 2**64)): another one would surface
    later, as a failed child or a torch overflow message that names no field."""
    if not is_seed(value):
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    return int(value)


def one_of(name: str, value: Any, choices) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def did_you_mean(name: str, known) -> str:
    """`` (did you mean X?)`` for the known name closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(name, [str(k) for k in known], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def known_fields(section: str, given, known) -> None:
    """Refuse keys a config section does not define (a misspelt key must not be silently ignored)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} field(s) {', '.join(unknown)}{did_you_mean(unknown[0], known)}; "
                         f"known: {', '.join(sorted(known))}")
