"""`alignray` console script: dispatches `alignray <command> ...` to a thin entrypoint module.

Each module exposes `main(argv: list[str]) -> int`. Modules import lazily so `alignray --help` is instant.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "train": ("launch.train", "train a policy (Hydra app: alignray train objective=dpo cluster.num_workers=2 ...)"),
    "store": ("launch.store", "build / inspect / verify / sample / extend preference stores"),
    "submit": ("launch.jobs", "submit `alignray train` to a Ray cluster through the Jobs API"),
    "job": ("launch.jobs", "status | logs | stop | list of submitted jobs"),
}


def _usage() -> str:
    lines = ["usage: alignray <command> [args...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"alignray: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    # `job` and `submit` share a module; it sees which one was asked for.
    return int(module.main([command, *rest] if command in ("submit", "job") else rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
