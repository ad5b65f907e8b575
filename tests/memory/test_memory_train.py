"""End to end on 2 workers, ZeRO-3: gradient checkpointing + tiled log-probs + parameter and optimizer offload
train the demo with the same per-step losses as the plain path (CPU Adam vs torch AdamW: tolerance 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import compose

pytestmark = pytest.mark.slow
STEPS = 6
BASE = ["data.demo_train_rows=24", "data.demo_eval_rows=8", f"train.max_steps={STEPS}", "train.warmup_steps=1",
        "train.lr=2e-2", "train.eval_at_start=false", "train.eval_at_end=false", "train.export=false",
        "cluster.num_workers=2", "train.micro_batch_size=4", "deepspeed.zero_stage=3", "objective=dpo"]


def _run(output: Path, tiny: str, overrides: List[str]) -> Dict:
    from framework.run import train

    train(compose(BASE + [f"output_dir={output}", f"model.path={tiny}", *overrides]))
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"losses": {int(r["step"]): r["loss"] for r in rows if "loss" in r},
            "info": json.loads((output / "run_info.json").read_text())}


def _moved(losses: Dict[int, float]) -> bool:
    """The weights changed enough for equal losses to mean something."""
    return max(losses.values()) - min(losses.values()) > 0.05


def test_checkpointing_tiling_and_offload_train_like_the_plain_path(tmp_path, tiny_model_dir, ray_local):
    plain = _run(tmp_path / "plain", tiny_model_dir, ["model.tiled_logps_above=0"])
    lean = _run(tmp_path / "lean", tiny_model_dir, [
        "model.gradient_checkpointing=true", "model.tiled_logps_above=8",  # demo pairs are ~20-40 tokens: tiled
        "deepspeed.offload_params=true", "deepspeed.offload_optimizer=true"])
    info = lean["info"]
    assert info["gradient_checkpointing"] and info["offload_params"] and info["offload_optimizer"]
    assert sorted(plain["losses"]) == sorted(lean["losses"]) == list(range(1, STEPS + 1))
    assert _moved(plain["losses"])
    for step, loss in plain["losses"].items():
        assert lean["losses"][step] == pytest.approx(loss, abs=1e-5), step


def test_sequence_parallel_trains_like_one_worker(tmp_path, tiny_model_dir, ray_local):
    """`cluster.num_workers=2 train.sequence_parallel=2` (dp = 1, each pair split over both workers) against one
    worker holding whole sequences: the same examples per step, so the same losses (ZeRO-2, fp32)."""
    zero2 = ["deepspeed.zero_stage=2"]
    single = _run(tmp_path / "single", tiny_model_dir, zero2 + ["cluster.num_workers=1"])
    split = _run(tmp_path / "sp2", tiny_model_dir, zero2 + ["train.sequence_parallel=2"])
    assert split["info"]["sequence_parallel"] == 2 and split["info"]["world_size"] == 2
    assert sorted(single["losses"]) == sorted(split["losses"]) == list(range(1, STEPS + 1))
    assert _moved(single["losses"])
    for step, loss in single["losses"].items():
        assert split["losses"][step] == pytest.approx(loss, abs=1e-5), step
