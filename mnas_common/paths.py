"""Where the project keeps what it builds once and reuses: prepared datasets, converted models, downloads."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$MNAS_CACHE_DIR/<parts>`` or ``~/.cache/mnasnet-search/<parts>``, absolute (nothing is created here)."""
    base = os.environ.get("MNAS_CACHE_DIR")
    return (Path(base).expanduser().absolute() if base else Path.home() / ".cache" / "mnasnet-search").joinpath(*parts)


def config_dir() -> Path:
    """The Hydra config tree: the ``configs`` package (``configs/`` in a checkout, package data once installed)."""
    import configs

    return Path(configs.__file__).resolve().parent
