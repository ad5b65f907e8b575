"""`UserError`: the base of every error a user's input causes (paths, data, models, configs, addresses, tokens).

The CLI (launch/cli.py) prints a UserError as one line, `alignray <command>: error: <what>, <where> — <how to fix>`,
and exits 2; anything else is our bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

from typing import Iterator, Optional


class UserError(Exception):
    """A problem the user can fix: `message` says what is wrong and where, `hint` how to fix it."""

    def __init__(self, message: str, hint: Optional[str] = None):
        # Both in args so the error survives pickling (it may come back from a Ray worker).
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: exception chains, Ray task errors (`cause`), Ray Train's worker and
    controller failures. Read by attribute so that this module needs no Ray import."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        failures = getattr(current, "worker_failures", None) or {}
        pending += [failures[rank] for rank in sorted(failures)]
        pending += [getattr(current, name, None) for name in ("controller_failure", "cause")]
        pending += [current.__cause__, current.__context__]


def find_user_error(error: BaseException) -> Optional[UserError]:
    """The UserError behind `error` (itself, or one it wraps), else None. Ray re-raises a task's error as a
    subclass of both RayTaskError and the error's class, printed as a traceback: take its `cause` instead."""
    return next((item for item in _causes(error) if isinstance(item, UserError)
                 and not isinstance(getattr(item, "cause", None), BaseException)), None)
