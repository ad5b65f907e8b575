"""Every objective family trains through the real slice (2 Ray Train workers, DeepSpeed ZeRO-2) on demo data of
its kind, plus a DPO run that reads stored reference log-probs instead of holding a reference model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import compose

pytestmark = pytest.mark.slow
SMALL = ["data.demo_train_rows=24", "data.demo_eval_rows=16", "train.micro_batch_size=4", "train.max_steps=3",
         "train.eval_at_start=false", "train.warmup_steps=0", "cluster.num_workers=2"]


def _aligned_model(tmp: Path) -> str:
    """PoFT's aligned LM: another tiny model (different seed) with the demo tokenizer."""
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    return str(build_tiny_llama(tmp / "aligned", demo_tokenizer_path(), seed=1))


def _train(tmp: Path, tiny: str, objective: str, *extra: str) -> dict:
    from framework.run import train

    out = tmp / objective
    summary = train(compose(SMALL + [f"objective={objective}", f"model.path={tiny}", f"output_dir={out}", *extra]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((out / "run_info.json").read_text())
    return {"summary": summary, "losses": [r["loss"] for r in rows if "loss" in r], "info": info, "dir": out}


@pytest.mark.parametrize("objective,reference", [("lipo_lambda", "live"), ("kto", "live"), ("poft", "none"),
                                                 ("bt_reward", "none")])
def test_family_trains(objective, reference, tmp_path, tiny_model_dir, ray_local):
    extra = [f"data.aligned_models=[{_aligned_model(tmp_path)}]"] if objective == "poft" else []
    run = _train(tmp_path, tiny_model_dir, objective, *extra)
    if objective == "poft":  # the aligned LM differs from the policy, so τ does not start at the constant 0.5
        first = json.loads((run["dir"] / "metrics.jsonl").read_text().splitlines()[0])
        assert abs(first["tau"] - 0.5) > 1e-3
    assert run["info"]["reference"] == reference
    assert len(run["losses"]) == 3 and all(math.isfinite(v) for v in run["losses"])
    assert run["summary"]["eval_accuracy_end"] is not None
    assert (run["dir"] / "export" / "model.safetensors").exists()


def test_reward_model_export_scores_responses(tmp_path, tiny_model_dir, ray_local):
    from framework.model.reward import score

    run = _train(tmp_path, tiny_model_dir, "bt_reward", "train.max_steps=2")
    scores = score(str(run["dir"] / "export"), ["tell me about fruit ."] * 2, ["apple pear plum .", "drum harp horn ."])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]


def test_stored_reference_training_holds_no_reference_model(tmp_path, tiny_model_dir, ray_local):
    from framework import demo_data
    from framework.cluster.store_passes import add_reference
    from framework.store import build_store

    source = demo_data.write_jsonl(demo_data.pairs(24, seed=5), tmp_path / "pairs.jsonl")
    store = build_store([str(source)], str(tmp_path / "store"), tokenizer=tiny_model_dir, max_prompt_tokens=64,
                        max_response_tokens=128, progress=False)
    add_reference(str(store.root), tiny_model_dir, max_length=128, max_prompt_length=64)
    run = _train(tmp_path, tiny_model_dir, "dpo", f"data.train={store.root}", "data.use_stored_reference=require")
    assert run["info"]["reference"] == "stored"
    # At step 1 the policy is the reference: stored log-probs equal to live ones give exactly log 2.
    assert abs(run["losses"][0] - math.log(2)) < 1e-5
    assert all(math.isfinite(v) for v in run["losses"])
