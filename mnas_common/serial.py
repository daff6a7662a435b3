"""Plain-dict round trips for result dataclasses (results cross process and machine boundaries as JSON)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="Serializable")


class Serializable:
    """Mixin for dataclasses: ``to_dict()`` and ``from_dict()`` that ignores keys it does not know (newer writers)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})
