"""`alignray` console script: dispatches `alignray <command> ...` to a thin entrypoint module.

Each module exposes `main(argv: list[str]) -> int`. Modules import lazily so `alignray --help` is instant.
This is also the one error boundary: an error the user's input caused (`framework.errors.UserError`) prints one
line and exits 2; any other exception is a bug and keeps its traceback (exit 1). `--debug` or ALIGNRAY_DEBUG=1
prints the traceback of user errors too.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import List, Optional, Tuple

from framework.errors import UserError, find_user_error

COMMANDS = {
    "train": ("launch.train", "train a policy (Hydra app: alignray train objective=dpo cluster.num_workers=2 ...)"),
    "store": ("launch.store", "build / inspect / verify / sample / extend preference stores"),
    "submit": ("launch.jobs", "submit `alignray train` to a Ray cluster through the Jobs API"),
    "orchestrate": ("launch.orchestrate", "train the PRO objective-weight adapter / print its weights for prompts"),
    "job": ("launch.jobs", "status | logs | stop | list of submitted jobs"),
    "eval": ("launch.eval", "ranking / implicit-reward / idealized accuracy, win rates and a report for a model"),
    "generate": ("launch.generate", "sample K continuations per prompt on Ray workers (seeded per row) to JSONL"),
    "spa": ("launch.spa", "SPA: R rounds of self-labelled preference pairs (implicit reward) + noise-aware loss"),
    "select": ("launch.select", "RPS: best-of-N over nearby weight directions, scored by per-objective rewards"),
    "pal": ("launch.pal", "PAL: fit a new user's weights few-shot into an objective=pal_reward export"),
    "bench": ("launch.bench", "benchmarks from benchmarks/: alignray bench pareto ... (alignray bench --help)"),
}
USER_ERROR_EXIT = 2


def _usage() -> str:
    lines = ["usage: alignray [--debug] <command> [args...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "errors caused by input print one line and exit 2; --debug or ALIGNRAY_DEBUG=1 adds the traceback"]
    return "\n".join(lines)


def _take_debug_flag(argv: List[str]) -> Tuple[List[str], bool]:
    """Remove `--debug` wherever it appears before a `--` (after it, arguments belong to the train job)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head = [arg for arg in argv[:cut] if arg != "--debug"]
    debug = len(head) < cut or os.environ.get("ALIGNRAY_DEBUG", "") not in ("", "0")
    return head + argv[cut:], debug


def _as_user_error(error: BaseException) -> Optional[UserError]:
    """The user error behind `error`, if any. Hydra's override and composition errors are user errors too
    (`alignray train foo=1`); they are recognised here so that launch/train.py stays a thin Hydra app."""
    found = find_user_error(error)
    if found is None and "hydra" in sys.modules:
        from hydra.errors import CompactHydraException

        if isinstance(error, CompactHydraException):
            message = str(error).split("Config search path")[0]  # Hydra appends its search path
            found = UserError(message, "see `alignray train --help` for the config groups and keys")
    return found


def report_user_error(command: str, error: UserError) -> int:
    """Print `error` as the one-line user error of `command`; returns the exit code."""
    line = " ".join(str(error).split())  # one line, whatever the message held
    print(f"alignray {command}: error: {line}", file=sys.stderr)
    return USER_ERROR_EXIT


def main(argv: Optional[List[str]] = None) -> int:
    argv, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"alignray: error: unknown command {command!r} — use one of {', '.join(COMMANDS)} "
              "(alignray --help)", file=sys.stderr)
        return USER_ERROR_EXIT
    # Hydra (train) would print any exception itself and exit 1; let it reach the boundary below instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        module = importlib.import_module(COMMANDS[command][0])
        # `job` and `submit` share a module; it sees which one was asked for.
        return int(module.main([command, *rest] if command in ("submit", "job") else rest) or 0)
    except Exception as error:
        user_error = _as_user_error(error)
        if user_error is None:
            raise
        if debug:
            traceback.print_exception(error)
        return report_user_error(command, user_error)


if __name__ == "__main__":
    sys.exit(main())
