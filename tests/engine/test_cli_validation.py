"""Bad overrides fail fast, naming the key and the allowed values, before Ray or any worker starts."""

import subprocess
import sys
import time

import pytest

from framework.config import ConfigError
from tests.conftest import compose


def _train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", "train", *overrides, "output_dir=/tmp/alignray-never"],
                          capture_output=True, text=True, timeout=120)


def test_unknown_objective_lists_choices():
    started = time.perf_counter()
    proc = _train("objective=nope")
    assert proc.returncode != 0
    assert "objective" in proc.stderr and "nope" in proc.stderr and "dpo" in proc.stderr
    assert "Ray" not in proc.stderr + proc.stdout and time.perf_counter() - started < 60


def test_bad_zero_stage_names_key_and_allowed_values():
    proc = _train("deepspeed.zero_stage=7")
    assert proc.returncode == 2
    assert "deepspeed.zero_stage=7 is not allowed; allowed: 0, 1, 2, 3" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,message", [
    ("train.max_steps=0", "train.max_steps=0 must be a positive number"),
    ("+deepspeed.zero_stag=2", "unknown key deepspeed.zero_stag"),
    ("objective.beta=-1", "objective.dpo: dpo: beta must be a finite number > 0"),
    ("+objective.gamma=1", "objective.dpo"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("+", "")):
        compose([override])
