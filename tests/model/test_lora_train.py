"""LoRA end to end: `alignray train model.lora.r=8 objective=dpo cluster.num_workers=2 deepspeed.zero_stage=3` with
the frozen base as the reference (no second copy), adapter-only checkpoints, an exact resume from one of them,
and exports (peft adapter + merged model) that score like the engine. Then one short run per objective family."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.conftest import compose

pytestmark = pytest.mark.slow
STEPS = 8
BASE = ["data.demo_train_rows=24", "data.demo_eval_rows=16", f"train.max_steps={STEPS}", "train.warmup_steps=2",
        "train.lr=2e-2", "train.eval_at_start=false", "train.checkpoint_every=4", "train.keep_checkpoints=3",
        "cluster.num_workers=2", "train.micro_batch_size=4", "model.lora.r=8", "deepspeed.zero_stage=3",
        "objective=dpo"]


def _run(output: Path, tiny: str, overrides: List[str]) -> Dict:
    from framework.run import train

    cfg = compose(BASE + [f"output_dir={output}", f"model.path={tiny}", *overrides])
    summary = train(cfg)
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"summary": summary, "losses": {int(r["step"]): r["loss"] for r in rows if "loss" in r},
            "dir": output, "cfg": cfg, "info": json.loads((output / "run_info.json").read_text())}


def _checkpoint(run: Dict, step: int) -> Path:
    return next((run["dir"] / "ray").glob(f"train-*/checkpoint-{step:06d}"))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, ray_local):
    return _run(tmp_path_factory.mktemp("lora") / "run", tiny_model_dir, [])


def test_reference_is_the_base_with_adapters_off(lora_run, tiny_model_dir):
    info = lora_run["info"]
    assert info["reference"] == "live"
    assert info["reference_from"].startswith("the policy with its LoRA adapters disabled") and "no second copy" in info["reference_from"]
    assert info["lora"] == {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert 0 < info["trainable_params"] < info["total_params"] / 10
    for rank in range(2):  # weights: the partitioned base (ZeRO-3); optimizer: fp32 master + Adam of the adapters
        memory = json.loads((lora_run["dir"] / "memory" / f"rank{rank}.json").read_text())
        assert memory["peak_rss_mib"] > memory["weights_mib"] > 0
        assert 0 < memory["optimizer_mib"] < memory["weights_mib"] / 5
    losses = lora_run["losses"]
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[1] == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-4)  # B = 0: policy == reference
    assert losses[STEPS] < losses[1] - 1e-3


def test_checkpoints_hold_the_adapter_not_the_base(lora_run, tiny_model_dir):
    checkpoint = _checkpoint(lora_run, STEPS)
    base_bytes = (Path(tiny_model_dir) / "model.safetensors").stat().st_size
    saved = sum(f.stat().st_size for f in (checkpoint / "model").rglob("*") if f.is_file())
    assert saved < base_bytes / 3, (saved, base_bytes)  # adapter + Adam state + bookkeeping, no base weights
    from framework.engine.seam import consolidated_state_dict

    state = consolidated_state_dict(str(checkpoint))
    assert state and all("lora_" in name for name in state), sorted(state)[:3]


def test_resume_auto_from_an_adapter_checkpoint_is_exact(lora_run, tiny_model_dir, tmp_path):
    """The run's storage as if it had stopped after step 4: `resume=auto` must find checkpoint 4 and continue."""
    import shutil

    stopped = tmp_path / "resumed"
    shutil.copytree(lora_run["dir"] / "ray", stopped / "ray")
    for later in (stopped / "ray").glob(f"train-*/checkpoint-{STEPS:06d}"):
        shutil.rmtree(later)
    resumed = _run(stopped, tiny_model_dir, ["resume=auto"])
    assert sorted(resumed["losses"]) == list(range(5, STEPS + 1))
    for step in range(5, STEPS + 1):
        assert resumed["losses"][step] == pytest.approx(lora_run["losses"][step], rel=1e-5, abs=1e-6), step


def test_exports_score_like_the_engine(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from framework.cluster.worker import _eval_batches
    from framework.engine.step import stats
    from framework.model.loading import load_tokenizer
    from framework.objectives import build_objective

    cfg, export = lora_run["cfg"], lora_run["dir"] / "export"
    merged = AutoModelForCausalLM.from_pretrained(export).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), export / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert json.loads((export / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(Path(tiny_model_dir).resolve())
    objective = build_objective(cfg.objective_name, **cfg.objective_hparams)
    pad_id = load_tokenizer(str(export)).pad_token_id
    for rank in range(cfg.cluster.num_workers):
        probe = torch.load(lora_run["dir"] / "probe" / f"rank{rank}.pt")
        batch = _eval_batches(str(lora_run["dir"] / "store" / "eval"), rank, 2, cfg, pad_id, objective)[0]
        assert batch.row_ids == probe["row_ids"]
        with torch.no_grad():
            assert torch.allclose(stats(merged, batch.tokens).logps, probe["logps"], atol=1e-4)
            assert torch.allclose(stats(adapter, batch.tokens).logps, probe["logps"], atol=1e-4)
            assert (stats(base, batch.tokens).logps - probe["logps"]).abs().max() > 1e-3  # training moved it


@pytest.mark.parametrize("objective, zero", [("kto", 1), ("lipo_lambda", 2), ("bt_reward", 2), ("weighted_sum", 1)])
def test_every_family_trains_with_lora(objective, zero, tiny_model_dir, tmp_path, ray_local):
    """Binary, listwise, reward-model and multi-objective families on ZeRO-1/2 (pairwise on ZeRO-3 above)."""
    run = _run(tmp_path / objective, tiny_model_dir, [f"objective={objective}", f"deepspeed.zero_stage={zero}",
                                                      "train.max_steps=3", "train.checkpoint_every=0",
                                                      "cluster.num_workers=1", "train.eval_at_end=false"])
    assert sorted(run["losses"]) == [1, 2, 3] and all(torch.isfinite(torch.tensor(list(run["losses"].values()))))
    info = run["info"]
    assert info["trainable_params"] < info["total_params"] / 5
    export = run["dir"] / "export"
    assert (export / "adapter" / "adapter_config.json").exists() and (export / "model.safetensors").exists()
    if objective == "bt_reward":  # the scalar head is trained in full and exported with the merged model
        from transformers import AutoModelForSequenceClassification

        assert AutoModelForSequenceClassification.from_pretrained(export).config.num_labels == 1
        assert info["reference"] == "none"


def test_a_named_reference_model_is_still_loaded(tiny_model_dir, tmp_path, ray_local):
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path

    other = build_tiny_llama(tmp_path / "other", demo_tokenizer_path(), seed=3)
    run = _run(tmp_path / "named", tiny_model_dir, [f"model.reference_path={other}", "train.max_steps=2",
                                                    "train.checkpoint_every=0", "cluster.num_workers=1",
                                                    "deepspeed.zero_stage=2", "train.eval_at_end=false"])
    assert run["info"]["reference_from"] == f"a separate model loaded from {other}"
    assert run["losses"][1] != pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-3)  # policy != reference
