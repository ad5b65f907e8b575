"""launch/cli.py's error boundary: user errors (also wrapped by Ray) are one line and exit 2; bugs keep their
traceback and exit 1. The commands here are tiny modules written by the test and registered in COMMANDS."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from framework.errors import UserError, find_user_error
from framework.store.errors import StoreError

REPO = Path(__file__).resolve().parents[2]
RAISES = {
    "internal": "raise RuntimeError('a bug')",
    "user": "raise StoreError('x.jsonl: empty input (no rows)', 'add rows')",
    "worker": "raise WorkerGroupError('rank 0 failed', {0: StoreError('x.jsonl: empty input (no rows)')})",
}


def _run_command(tmp_path: Path, kind: str, *flags: str, debug_env: bool = False) -> subprocess.CompletedProcess:
    """`alignray [flags] boom` where the `boom` command raises RAISES[kind]."""
    (tmp_path / "boom.py").write_text(
        "from framework.store.errors import StoreError\nfrom ray.train import WorkerGroupError\n\n\n"
        f"def main(argv):\n    {RAISES[kind]}\n")
    code = "import sys, launch.cli as cli; cli.COMMANDS['boom'] = ('boom', ''); sys.exit(cli.main())"
    env = {k: v for k, v in os.environ.items() if k != "ALIGNRAY_DEBUG"}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}", **({"ALIGNRAY_DEBUG": "1"} if debug_env else {}))
    return subprocess.run([sys.executable, "-c", code, *flags, "boom"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)


def test_internal_error_keeps_its_traceback_and_exits_1(tmp_path: Path):
    result = _run_command(tmp_path, "internal")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and result.stderr.strip().endswith("RuntimeError: a bug")


@pytest.mark.parametrize("kind", ["user", "worker"])
def test_user_error_is_one_line_even_when_a_worker_raised_it(tmp_path: Path, kind: str):
    result = _run_command(tmp_path, kind)
    expected = "alignray boom: error: x.jsonl: empty input (no rows)" + (" — add rows" if kind == "user" else "")
    assert (result.returncode, result.stderr.strip()) == (2, expected)


@pytest.mark.parametrize("debug", ["--debug", "ALIGNRAY_DEBUG=1"])
def test_debug_adds_the_traceback(tmp_path: Path, debug: str):
    flags = ["--debug"] if debug == "--debug" else []
    result = _run_command(tmp_path, "worker", *flags, debug_env=not flags)
    assert result.returncode == 2 and "Traceback" in result.stderr and "WorkerGroupError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "alignray boom: error: x.jsonl: empty input (no rows)"


@pytest.mark.slow
def test_a_user_error_raised_in_a_ray_worker_is_one_line(tmp_path: Path, tiny_model_dir: str):
    """Weights that do not fit the config pass the driver's checks (headers are fine) and fail in the worker."""
    import json
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.intermediate_size *= 2
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wider")
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    shutil.copy(tmp_path / "wider" / "model.safetensors", model / "model.safetensors")
    assert json.loads((model / "config.json").read_text())["intermediate_size"] * 2 == config.intermediate_size
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNRAY_DEBUG", "RAY_ADDRESS")}
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", f"model.path={model}", f"output_dir={tmp_path / 'run'}",
         "train.max_steps=2", "cluster.num_workers=1", "data.demo_train_rows=64", "data.demo_eval_rows=16"],
        capture_output=True, text=True, env=dict(env, PYTHONPATH=str(REPO)), timeout=600, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"alignray train: error: cannot load the model from {model}")
    driver = [line for line in result.stderr.splitlines() if "pid=" not in line]  # Ray forwards worker logs
    assert not any("Traceback" in line for line in driver), result.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists() and not list((tmp_path / "run").glob("**/COMMITTED.json"))


def test_user_errors_survive_pickling_and_ray_wrappers():
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    error = StoreError("shard.arrow: missing", "rebuild the store")
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == "shard.arrow: missing — rebuild the store" and isinstance(clone, UserError)
    # What Ray hands back for a task's error: a class deriving from both RayTaskError and StoreError.
    task_error = RayTaskError("add_reference", "Traceback ...", error).as_instanceof_cause()
    assert isinstance(task_error, StoreError) and str(find_user_error(task_error)) == str(error)
    failures = {0: RuntimeError("peer"), 1: RayTaskError("train_worker", "Traceback ...", error)}
    group = pickle.loads(pickle.dumps(WorkerGroupError("rank 1 failed", failures)))
    assert str(find_user_error(group)) == str(error)
    assert find_user_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("a bug")})) is None
    try:
        try:
            raise error
        except StoreError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert find_user_error(outer) is error
