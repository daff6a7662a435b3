"""``python -m nas.search``: the MnasNet search loop (issue 6).

The loop needs the controllers/rewards, trainer and latency packages. Until all of them are present this entry
point says which part is missing and exits non-zero instead of pretending to search.
"""

from __future__ import annotations

import importlib
import sys

REQUIRED = {
    "controllers": "controllers.build",
    "rewards": "rewards",
    "latency": "latency.build_service",
    "nas.trainer": "nas.trainer.train_child",
}


def missing_parts() -> list[str]:
    missing = []
    for module, attr in REQUIRED.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        name = attr.rsplit(".", 1)[-1]
        if "." in attr and not hasattr(mod, name):
            missing.append(attr)
    return missing


def main() -> int:
    missing = missing_parts()
    print(
        "error: the search loop is not available yet; missing parts: " + ", ".join(missing or ["nas.search loop"]),
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
