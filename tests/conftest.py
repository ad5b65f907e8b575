"""Session-wide test environment: offline, loopback-only Ray, generated assets in a temp cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_rank(function: str, stages: List[int]) -> Dict[int, Any]:
    """`module:function(stage)` for each ZeRO stage in one fresh process with a world-size-1 gloo group:
    real DeepSpeed engines without Ray. The function returns JSON-able results."""
    module, name = function.split(":")
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    code = (f"import json; from {module} import {name}; "
            f"print('RESULT ' + json.dumps({{s: {name}(s) for s in {list(stages)!r}}}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return {int(k): v for k, v in json.loads(lines[-1][len("RESULT "):]).items()}


@pytest.fixture(scope="session", autouse=True)
def _asset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo model and other generated assets go to a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("alignray-cache")
    os.environ["ALIGNRAY_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama built from a config and saved with save_pretrained; tests load it via from_pretrained."""
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_tokenizer_path(), seed=0))


def compose(overrides: List[str]):
    """The real Hydra config (conf/) with overrides, validated into a RunConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from framework.config import from_dict

    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = hydra_compose(config_name="config", overrides=overrides)
    return from_dict(OmegaConf.to_container(raw, resolve=True))


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for all in-process TorchTrainer runs of the session (start-up costs ~6 s)."""
    import ray

    from framework.cluster.launcher import ensure_ray

    ensure_ray(compose(["cluster.num_cpus=4"]))
    yield
    ray.shutdown()
