"""Where the project keeps what it builds once and reuses: prepared datasets, converted models, downloads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$MNAS_CACHE_DIR/<parts>`` or ``~/.cache/mnasnet-search/<parts>``, absolute (nothing is created here)."""
    base = os.environ.get("MNAS_CACHE_DIR")
    return (Path(base).expanduser().absolute() if base else Path.home() / ".cache" / "mnasnet-search").joinpath(*parts)


def device_locks_dir() -> Path:
    """Where the locks of this machine's devices live (one timing per phone or host CPU at a time; the host gate):
    ``$MNAS_CACHE_DIR/locks`` or ``~/.cache/mnasnet-search/locks``, the same for every search and latency cache of
    this user, so that searches with caches of their own still take turns on the device they share. A temporary
    directory of the user where that cannot be created."""
    path = cache_dir("locks")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / f"mnasnet-search-locks-{os.getuid()}"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """The Hydra config tree: the ``configs`` package (``configs/`` in a checkout, package data once installed)."""
    import configs

    return Path(configs.__file__).resolve().parent


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (``exists()`` is False under a regular file too)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def directory_problem(directory: str | Path) -> str | None:
    """Why files cannot be written in ``directory`` (made if missing), found before any work; None when they can:
    its nearest existing ancestor must be a directory this process may write in."""
    existing = nearest_existing(Path(directory))
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (read-only)"
    return None
