"""One-line error messages: what users see is the first line of a cause, never a traceback."""

from __future__ import annotations

import argparse


def first_line(value: object, *, limit: int = 500, with_type: bool = False) -> str:
    """The first non-empty line of ``value`` (an exception or any text), at most ``limit`` characters.

    ``with_type`` prefixes an exception's class name (``OSError: ...``); an exception without a message is its
    class name alone, so the result is never empty for an exception.
    """
    text = str(value).strip()
    line = text.splitlines()[0].strip() if text else ""
    if isinstance(value, BaseException):
        name = value.__class__.__name__
        if not line:
            return name
        if with_type:
            line = f"{name}: {line}"
    return line[:limit]


def cause_of(exc: BaseException) -> BaseException:
    """The innermost explicit cause (Hydra wraps a component's own ``ValueError`` in its exceptions)."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose bad command lines are one line, ``error: PROG: ...``, and exit 2 (not the whole
    usage): as every other bad input of the command-line tools."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")

    def require_positive(self, args: argparse.Namespace, *dests: str) -> None:
        """Each of ``args``' int options ``dests`` (argparse names: ``images_per_class``) is >= 1, or one error line
        naming the first that is not (``--images-per-class must be >= 1, got 0``)."""
        for dest in dests:
            value = getattr(args, dest)
            if value < 1:
                self.error(f"--{dest.replace('_', '-')} must be >= 1, got {value}")
