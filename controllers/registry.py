"""Controllers by name, like torchvision's model registry: one name, one class, duplicates refused.

``build`` is the Hydra ``_target_`` of every ``configs/controller/*.yaml``; unknown names and unknown
hyper-parameters are refused with a one-line message instead of a ``TypeError`` deep inside a constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from mnas_common.checks import did_you_mean
from mnas_common.config import to_plain

from controllers.base import Controller

_REGISTRY: dict[str, type[Controller]] = {}


def register_controller(name: str) -> Callable[[type[Controller]], type[Controller]]:
    """Class decorator: make a controller buildable as ``build(name, ...)``. A taken name is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"controller name must be a non-empty string, got {name!r}")

    def deco(cls: type[Controller]) -> type[Controller]:
        if name in _REGISTRY:
            raise ValueError(f"controller '{name}' is already registered (by {_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_controllers() -> list[str]:
    return sorted(_REGISTRY)


def get_controller_class(name: str) -> type[Controller]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown controller '{name}'; choose from {', '.join(list_controllers())}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> dict[str, object]:
    """The keyword arguments a controller accepts, with their defaults (for docs and error messages)."""
    found: dict[str, object] = {}
    for klass in get_controller_class(name).__mro__:  # subclasses pass the rest on as **kwargs
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed":
                found.setdefault(p.name, p.default)
    return found


def build(name: str, num_choices: Sequence[int], *, seed: int = 0, **kwargs) -> Controller:
    """Build controller ``name`` for a space with ``num_choices[i]`` options at decision ``i``."""
    cls = get_controller_class(name)
    accepted = hyperparameters(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"controller '{name}' got unknown hyper-parameter(s) {', '.join(unknown)}"
            f"{did_you_mean(unknown[0], accepted)}; "
            f"accepted: {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(to_plain(num_choices), seed=seed, **{k: to_plain(v) for k, v in kwargs.items()})
