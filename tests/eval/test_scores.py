"""`alignray eval`'s scores and ranking accuracy against log-probs computed independently with plain
transformers, on the real HH-RLHF pairs in ../shared (skipped where absent) and on the demo pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED

HH_RLHF = SHARED / "data" / "hh-rlhf" / "harmless-base-test-part.jsonl.gz"


def _independent_logps(model_dir: str, prompt_ids: list, response_ids: list, max_length: int,
                       max_prompt_length: int) -> float:
    """Σ log p(response token | everything before it), one unpadded forward, no alignray code. The cut follows
    the convention eval documents (and TRL uses): keep the prompt's end and the response's start."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = prompt_ids[-max_prompt_length:]
    response = response_ids[: max_length - len(prompt)]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    picked = logps[torch.arange(len(targets)), targets]
    return float(picked[len(prompt) - 1 :].sum())


def _scored(store_path: str, model: str, rows: int, max_length: int = 128, max_prompt_length: int = 64) -> list:
    """The eval worker's own function, run in-process (the Ray fan-out is exercised by the CLI test)."""
    from framework.cluster.evaluate import _score_part
    from framework.store import open_store

    scored = _score_part(store_path, 0, rows, model_path=model, reference_path=None, max_length=max_length,
                         max_prompt_length=max_prompt_length, batch_size=8)
    labels = open_store(store_path).table(columns=["kind", "scores", "label", "objective_names",
                                                   "objective_scores"]).to_pylist()[:rows]
    return [dict(label, **score) for label, score in zip(labels, scored)]


def _check_against_transformers(store_path: str, model: str, rows: int, beta: float = 0.1) -> dict:
    from framework.cluster.evaluate import metrics
    from framework.store import open_store

    scored = _scored(store_path, model, rows)
    table = open_store(store_path).table(columns=["prompt_ids", "response_ids"]).to_pylist()[:rows]
    independent = torch.tensor([[_independent_logps(model, row["prompt_ids"], r, 128, 64) for r in row["response_ids"]]
                                for row in table], dtype=torch.float64)
    ours = torch.tensor([row["logps"] for row in scored], dtype=torch.float64)
    assert torch.allclose(ours, independent, atol=1e-3, rtol=1e-4), (ours - independent).abs().max()
    result = metrics(scored, beta=beta, alpha=0.9)
    expected = float((independent[:, 0] > independent[:, 1]).double().mean())
    assert result["pairs"] == rows and result["ranking_accuracy"] == pytest.approx(expected)
    assert result["mean_margin"] == pytest.approx(float((independent[:, 0] - independent[:, 1]).mean()), abs=1e-3)
    return result


def test_ranking_accuracy_matches_plain_transformers_on_demo_pairs(tmp_path, tiny_model_dir):
    from framework import demo_data
    from framework.store import build_store

    source = demo_data.write_jsonl(demo_data.pairs(24, seed=5), tmp_path / "pairs.jsonl")
    store = build_store([str(source)], str(tmp_path / "store"), tokenizer=tiny_model_dir, num_proc=1, progress=False)
    result = _check_against_transformers(str(store.path), tiny_model_dir, 24)
    assert 0 < result["ranking_accuracy"] < 1  # an untrained model: both outcomes occur, so the check has teeth


@pytest.mark.skipif(not HH_RLHF.exists(), reason=f"shared HH-RLHF data not found at {HH_RLHF}")
def test_ranking_accuracy_on_real_hh_rlhf_pairs(tmp_path, tiny_model_dir):
    """Long multi-turn prompts (cut to their last 64 tokens) and long responses (cut at 128 in all)."""
    from framework.cluster.evaluate import prepare_stores

    store = prepare_stores([str(HH_RLHF)], tiny_model_dir, Path(tmp_path), max_length=128, max_prompt_length=64)[0]
    result = _check_against_transformers(store, tiny_model_dir, 48)
    assert set(result) >= {"pairs", "ranking_accuracy", "ranking_accuracy_mean", "mean_margin", "by_length"}


def test_a_store_is_used_as_is_only_when_tokenized_like_the_model(tmp_path, tiny_model_dir):
    from framework import demo_data
    from framework.cluster.evaluate import prepare_stores
    from framework.errors import UserError
    from framework.model.demo import train_demo_tokenizer
    from framework.store import build_store, open_store

    source = demo_data.write_jsonl(demo_data.pairs(6, seed=5), tmp_path / "pairs.jsonl")
    same = build_store([str(source)], str(tmp_path / "same"), tokenizer=tiny_model_dir, num_proc=1, progress=False)
    assert prepare_stores([str(tmp_path / "same")], tiny_model_dir, tmp_path, 128, 64) == [str(same.path)]
    other_tokenizer = str(train_demo_tokenizer(tmp_path / "other-tokenizer", vocab_size=300))
    build_store([str(source)], str(tmp_path / "other"), tokenizer=other_tokenizer, num_proc=1, progress=False)
    with pytest.raises(UserError, match="its tokenizer differs from the model's"):
        prepare_stores([str(tmp_path / "other")], tiny_model_dir, tmp_path, 128, 64)
    demo = prepare_stores(["demo"], tiny_model_dir, tmp_path, 128, 64)[0]  # make run's held-out pairs
    assert open_store(demo).num_rows == 256
