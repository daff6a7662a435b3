"""Every component of a search is built the same way: ``build(group, config, **runtime)``.

A config node names its class or factory with ``_target_`` (the Hydra convention) and holds its keyword arguments;
``runtime`` adds what only the caller knows (the controller's ``num_choices``, the evaluator's trainer and dataset).
Nested configs stay plain dicts: a component that owns parts (the evaluator owns its latency service) builds them
with this same function, which is what lets a Ray actor build its part on another machine from a dict.

Errors are values users can read: an unknown ``_target_``, a key the component does not take (a misspelt key must
not be silently ignored) or a value the component refuses all become one :class:`ConfigError` line naming the
config group, never a ``TypeError`` traceback from inside Hydra.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mnas_common.checks import did_you_mean
from mnas_common.config import to_plain
from mnas_common.errors import cause_of, first_line


class ConfigError(ValueError):
    """One or more configuration problems, printed as one line (``error: a; b; c``)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def _accepted(target) -> tuple[set[str], bool]:
    """Keyword names ``target`` takes, and whether it also takes ``**kwargs``."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def build(group: str, config: Mapping | Any, **runtime) -> Any:
    """Build the component of config group ``group`` from ``config`` (a dict or DictConfig with ``_target_``)."""
    from hydra.utils import get_object

    fields = to_plain(config)
    if not isinstance(fields, Mapping) or not fields.get("_target_"):
        raise ConfigError(f"{group}: the config has no _target_ naming the class to build, got {fields!r}")
    fields = dict(fields)
    path = fields.pop("_target_")
    try:
        target = get_object(path)
    except Exception:
        raise ConfigError(f"{group}: unknown _target_ {path!r}") from None
    if given := sorted(set(fields) & set(runtime)):  # the search's value would replace it without a word
        raise ConfigError(f"{group}.{given[0]}: set by the search, not by the {group} config"
                          + ("; set the top-level seed=N instead" if given[0] == "seed" else ""))
    kwargs = {**fields, **runtime}
    accepted, var_kwargs = _accepted(target)
    unknown = sorted(set(kwargs) - accepted) if not var_kwargs else []
    if unknown:
        raise ConfigError(f"unknown {group} field(s) {', '.join(unknown)}{did_you_mean(unknown[0], accepted)}; "
                          f"known: {', '.join(sorted(accepted - set(runtime)))}")
    try:
        return target(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        cause = cause_of(exc)
        message = first_line(cause, with_type=not isinstance(cause, ValueError))
        # "reward_for_invalid must be ..." starts with "reward" but names no group; "reward: ...", "reward.x ...",
        # "dataset 'tiny': ..." and "evaluator=ray: ..." do
        named = message.startswith(tuple(group + c for c in ":. ="))
        raise ConfigError(message if named else f"{group}: {message}") from None


def strip_targets(value: Any) -> Any:
    """A plain config without ``_target_`` keys: what defines a run's results, not which class computes them."""
    value = to_plain(value)
    if isinstance(value, Mapping):
        return {k: strip_targets(v) for k, v in value.items() if k != "_target_"}
    if isinstance(value, list):
        return [strip_targets(v) for v in value]
    return value
