"""``python -m nas.search``: run (or resume) a MnasNet search from its Hydra config.

    python -m nas.search +experiment=quickstart
    python -m nas.search +experiment=smoke run_dir=runs/try1 budget=16
    python -m nas.search +experiment=smoke evaluator=ray logger=[progress,events]
    python -m nas.search -m +experiment=quickstart reward=soft,hard seed=0,1,2

The work is in ``nas.run`` (build and validate the parts, lock the run) and ``nas.engine`` (the loop). Problems
with the command line, the config, the run store or a device are one ``error: ...`` line and exit status 2;
Ctrl-C or SIGTERM stop the search within seconds with one line saying what was committed (exit 130 / 143); the
last stdout line of a finished run is its summary as JSON.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

# TensorFlow (imported by the latency workers) logs from C++ at import; keep the console readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from controllers.base import PolicyDiverged  # noqa: E402
from mnas_common.paths import config_dir  # noqa: E402
from nas.cli import as_interrupted, check_command_line, error_message, fail, interrupts, is_multirun  # noqa: E402
from nas.components import ConfigError  # noqa: E402
from nas.data import DatasetUnavailable  # noqa: E402
from nas.evaluator import EvaluatorStopped  # noqa: E402
from nas.store import RunStore, StoreError  # noqa: E402
from rewards import RewardOverflow  # noqa: E402


def _committed(run_dir: Path) -> str:
    try:
        with RunStore(run_dir, readonly=True) as store:
            return f"{store.num_committed_children()} children committed ({store.last_step() + 1} steps)"
    except StoreError:
        return "nothing committed"


def _resume_hint(hydra_cfg) -> str:
    """How to resume: the same command; a sweep's directory is named by the time it started, so a sweep resumes
    only when given its directory again."""
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN or any(o.startswith("hydra.sweep.dir=") for o in hydra_cfg.overrides.hydra):
        return "run the same command to resume"
    return f"run the same command with hydra.sweep.dir={hydra_cfg.sweep.dir} to resume"


# The directories that a single run's run_dir makes new, outermost first: Hydra creates them before the app runs, and
# a refused command removes them again while they are empty (search.log is opened at its first record).
_made_dirs: list[Path] = []


def _refuse(message: str) -> None:
    for made in reversed(_made_dirs):
        try:
            made.rmdir()  # only while empty: whatever was written there stays
        except OSError:
            break
    fail(message)


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="search")
def _app(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from nas.run import run_search

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        with interrupts():
            summary = run_search(cfg, run_dir, overrides=list(hydra_cfg.overrides.task))
    except (ConfigError, StoreError, EvaluatorStopped, DatasetUnavailable, RewardOverflow,
            PolicyDiverged) as exc:
        _refuse(str(exc))
    except OSError as exc:  # a full disk outside the run store (a logger's file): the store keeps what it committed
        where = f"{exc.filename}: " if exc.filename else ""
        free = "free space and " if exc.errno == errno.ENOSPC else ""
        _refuse(f"{where}{exc.strerror or error_message(exc)}; {_committed(run_dir)} in {run_dir}; "
                f"{free}{_resume_hint(hydra_cfg)}")
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (interrupts()), also when Ray re-raised it as its own
        stop = as_interrupted(exc)
        print(f"interrupted ({stop}): {_committed(run_dir)} in {run_dir}; {_resume_hint(hydra_cfg)}",
              file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    from nas.run import check_run_dir, check_values

    argv = sys.argv[1:]
    try:
        cfg = check_command_line("search", argv, check=check_values)
        # Hydra creates the run directory (a sweep's directory) before the app runs
        problems = []
        if cfg is not None and is_multirun(argv):
            sweep = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")]
            problems = check_run_dir(Path(sweep[-1] if sweep else "multirun"), "hydra.sweep.dir")
        elif cfg is not None:
            run_dir = Path(cfg.run_dir).expanduser()
            problems = check_run_dir(run_dir)
            _made_dirs[:] = [d for d in reversed([run_dir.resolve(), *run_dir.resolve().parents]) if not d.exists()]
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        fail(str(exc))
    _app()


if __name__ == "__main__":
    main()
