"""OmegaConf/Hydra containers -> plain Python values (dicts, lists), the only form components receive."""

from __future__ import annotations

from typing import Any


def to_plain(value: Any) -> Any:
    """A ``DictConfig``/``ListConfig`` resolved to plain dicts and lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
