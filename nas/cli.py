"""What the Hydra entry points (``nas.search``, ``nas.train``) share: the command line checked before Hydra runs it,
and interrupts that end in one line.

Hydra reports a bad override (``controller=nope``, an unknown key) as a multi-line message with exit status 1; the
README promises one ``error: ...`` line and exit status 2. So the command line is composed once here first (for a
sweep, its first job), the way the app will compose it, and a key the config does not know (``+budgte=100``) is
refused instead of being carried silently through the run.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mnas_common.checks import did_you_mean
from mnas_common.paths import config_dir

from nas.components import ConfigError

def _register_resolvers() -> None:
    """``${expanduser:...}``: a quoted ``run_dir='~/runs/x'`` is a run in the home directory, not in a directory
    named ``~`` (Hydra's run directory is ``${expanduser:${run_dir}}``, configs/hydra/default.yaml)."""
    import os

    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("expanduser", lambda path: os.path.expanduser(str(path)), replace=True)


_register_resolvers()

# Hydra flags after which the command line is Hydra's own business (help, config printing, completion)
_HYDRA_ONLY = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion", "-sc",
               "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
               "--experimental-rerun", "--resolve")


MAX_CHECKED_JOBS = 1000  # a sweep's jobs composed and checked before the first one runs (beyond: the first 1000)


def is_multirun(argv: list[str]) -> bool:
    """Whether the command line asks Hydra for a sweep: ``-m``, ``--multirun`` or ``hydra.mode=MULTIRUN``."""
    return bool({"-m", "--multirun"} & set(argv)) or any(a.lstrip("+") == "hydra.mode=MULTIRUN" for a in argv)


def _jobs(argv: list[str], compose=None, config_loader=None) -> list[list[str]]:
    """The overrides of every job a sweep would run, as Hydra's basic sweeper orders them: the product of the sweep's
    parameters, those the config carries (``hydra.sweeper.params``, an experiment's ablation; read with ``compose``
    from the command line without its sweeps, as Hydra does) first, a command-line value of the same key taking its
    place; one job for a plain command line. A sweep value without ``-m`` is refused, as Hydra would, but in one
    line. ``config_loader``: Hydra's, for ``glob()`` sweeps over config groups."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    given = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    parsed = list(zip(parser.parse_overrides(given), given))
    hydra_cfg = None
    if compose is not None:
        try:
            hydra_cfg = compose([text for o, text in parsed if not o.is_sweep_override()]).hydra
        except Exception:  # a bad override: the jobs' own composition says what is wrong
            pass
    if not (is_multirun(argv) or hydra_cfg is not None and str(hydra_cfg.get("mode")).endswith("MULTIRUN")):
        for override, text in parsed:
            if override.is_sweep_override():
                raise ConfigError(f"{text} is a sweep: add -m (--multirun) to run one search per value, or write a "
                                  "list as key=[a,b]")
        return [given]
    params = (hydra_cfg.sweeper.get("params") if hydra_cfg is not None else None) or {}
    carried = [f"{key}={value}" for key, value in params.items()]
    choices: dict[str, list[str]] = {}  # by key, in first-seen order: a later value replaces, in place
    for override, text in list(zip(parser.parse_overrides(carried), carried)) + parsed:
        key = text.split("=", 1)[0]
        choices[override.get_key_element()] = ([f"{key}={value}" for value in override.sweep_string_iterator()]
                                               if override.is_sweep_override() else [text])
    return [list(job) for job in itertools.islice(itertools.product(*choices.values()), MAX_CHECKED_JOBS)]


def _keys(cfg, prefix: str = "") -> set[str]:
    from omegaconf import DictConfig

    keys = set()
    for key in cfg:
        keys.add(prefix + str(key))
        value = cfg.get(key)
        if isinstance(value, DictConfig) and str(key) in _PLAIN_SECTIONS:
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


# Sections without a _target_ (nothing validates their keys when it is built): their keys are checked here.
_PLAIN_SECTIONS = ("deploy", "pareto")


def check_command_line(config_name: str, argv: list[str], *, strict_keys: bool = True, check=None):
    """Compose ``config_name`` with the command line's overrides and return it (None when a Hydra-only flag such as
    ``--help`` is given); raise a one-line ConfigError for anything Hydra would refuse, and (``strict_keys``) for a
    top-level key that the config without overrides does not have, and for what ``check(cfg)`` (a list of problems)
    finds. A sweep (``-m``) is checked job by job before any runs, and the first job's config is returned: a bad
    value in its third job used to stop it after the first two had run."""
    from hydra import compose, initialize_config_dir

    if any(a in _HYDRA_ONLY or a.split("=", 1)[0] in _HYDRA_ONLY for a in argv):
        return None
    first = None
    try:
        with initialize_config_dir(version_base=None, config_dir=str(config_dir())):
            from hydra.core.global_hydra import GlobalHydra

            jobs = _jobs(argv, lambda overrides: compose(config_name=config_name, overrides=overrides,
                                                         return_hydra_config=True),
                         GlobalHydra.instance().config_loader())
            known = _keys(compose(config_name=config_name))
            for job in jobs:
                where = f"sweep job {' '.join(job)}: " if len(jobs) > 1 else ""
                try:
                    cfg = compose(config_name=config_name, overrides=job)
                except Exception as exc:
                    raise ConfigError(where + hydra_message(exc)) from None
                problems = []
                if strict_keys:
                    problems += [f"unknown config key {key!r}{did_you_mean(key, known)}"
                                 for key in sorted(_keys(cfg) - known)]
                if check is not None:
                    problems += check(cfg)
                if problems:
                    raise ConfigError([where + problem for problem in problems])
                first = cfg if first is None else first
    except ConfigError:
        raise
    except Exception as exc:
        message = hydra_message(exc)
        raise ConfigError(message + tilde_hint(message, argv)) from None
    return first


def hydra_message(exc: BaseException) -> str:
    """Hydra's message on one line, without the config search path it appends to a missing config (the same three
    providers every time, longer than the message itself)."""
    return " ".join(str(exc).split()).split(" Config search path:", 1)[0]


def error_message(exc: BaseException) -> str:
    """A command's one error line for ``exc`` (without ``error: ``): bad input (a ``ValueError``, a missing file,
    Hydra's and OmegaConf's config errors) by its message alone, as nas.search and nas.train name theirs; anything
    else with its class too, where the class tells what happened (``NotADirectoryError: ...``)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    message = hydra_message(exc)
    if isinstance(exc, (ValueError, FileNotFoundError, HydraException, OmegaConfBaseException)) and message:
        return message
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


def tilde_hint(message: str, argv: list[str]) -> str:
    """Hydra's grammar has no ``~`` in an unquoted value and the shell does not expand ``key=~/x`` (not a variable
    assignment): the lexer's message names neither, so say what to write instead. ``$HOME`` is expanded by the
    shell in any key; a quoted ``~`` only where the key's reader expands it (``run_dir``, ``dataset.root``,
    ``cache_dir``)."""
    tilde = next((a for a in argv if "=~" in a), None)
    if tilde is None or "Lexer" not in message:
        return ""
    key, value = tilde.split("=", 1)
    return f" (Hydra cannot read an unquoted ~: write {key}=$HOME{value[1:]})"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, raised in the main thread so that one clean-up path serves both."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


_received: list[int] = []  # the signals interrupts() turned into Interrupted, in order


def as_interrupted(exc: KeyboardInterrupt) -> Interrupted:
    """``exc`` as the :class:`Interrupted` it stands for. Ray turns an exception raised by a signal handler during
    its blocking calls (``ray.get`` while actors start) into a plain KeyboardInterrupt: the signal received is the
    one :func:`interrupts` recorded (SIGINT where none was)."""
    if isinstance(exc, Interrupted):
        return exc
    return Interrupted(_received[-1] if _received else signal.SIGINT)


@contextmanager
def interrupts() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted`. The first one also makes both ignored from then on: the
    clean-up it starts (stopping worker processes, closing the store) must not be interrupted half-way by a second
    Ctrl-C, and it takes seconds."""

    def on_signal(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _received.append(signum)
        raise Interrupted(signum)

    _received.clear()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
