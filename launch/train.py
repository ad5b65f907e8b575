"""`alignray train [overrides...]`: a Hydra app. Parse → validate (before Ray starts) → train → summary."""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import List

import hydra
from omegaconf import DictConfig, OmegaConf

from framework.config import from_dict

log = logging.getLogger("alignray")


class _Failed(BaseException):
    """Carries an error past Hydra, which would print its own banner before it; main() raises it again for
    launch/cli.py's boundary (one line for a UserError, else the traceback)."""


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def _app(raw: DictConfig) -> None:
    from framework.run import format_summary, train

    container = OmegaConf.to_container(raw, resolve=True)
    try:
        cfg = from_dict(container)
        summary = train(cfg)
    except Exception as error:
        raise _Failed(error) from None
    print(format_summary(summary), flush=True)
    stop = summary.get("interrupted")
    if stop:
        print(f"  resume with: {resume_command(sys.argv[1:], cfg.output_dir)}", flush=True)
        raise SystemExit(128 + signal.Signals[stop["signal"]])


def resume_command(overrides: List[str], output_dir: str) -> str:
    """The same command with the run's output_dir (absolute) and `resume=auto`."""
    kept = [arg for arg in overrides if not arg.startswith(("output_dir=", "resume=", "+resume="))]
    return shlex.join(["alignray", "train", *kept, f"output_dir={Path(output_dir).resolve()}", "resume=auto"])


def main(argv: List[str]) -> int:
    from framework.cluster.interrupt import install_handlers

    sys.argv = ["alignray train", *argv]
    install_handlers("alignray train")  # SIGINT/SIGTERM: stop after the step, checkpoint, print how to resume
    failure = None
    try:
        _app()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except _Failed as failed:
        failure = failed.args[0]
    finally:
        from framework.cluster.launcher import shutdown

        shutdown()
    if failure is not None:
        raise failure
    return 0
