"""`alignray train [overrides...]`: a Hydra app. Parse → validate (before Ray starts) → train → summary."""

from __future__ import annotations

import logging
import sys
from typing import List

import hydra
from omegaconf import DictConfig, OmegaConf

from framework.config import ConfigError, from_dict

log = logging.getLogger("alignray")


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def _app(raw: DictConfig) -> None:
    from framework.run import format_summary, train

    container = OmegaConf.to_container(raw, resolve=True)
    try:
        cfg = from_dict(container)
    except ConfigError as err:
        print(f"alignray train: invalid config: {err}", file=sys.stderr)
        raise SystemExit(2)
    summary = train(cfg)
    print(format_summary(summary), flush=True)


def main(argv: List[str]) -> int:
    sys.argv = ["alignray train", *argv]
    try:
        _app()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        from framework.cluster.launcher import shutdown

        shutdown()
    return 0
