"""The held-out evaluation inside training (`evaluate_pairs`): per-token-mean and idealized ranking accuracy agree
with `framework.engine.ranking` on the same models and pairs, padding rows count nowhere."""

from __future__ import annotations

import pytest
import torch

from framework.engine import ranking


class OneRank:
    """The seam's collective surface for a single process."""

    device = torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def test_evaluate_pairs_mean_and_idealized_accuracy(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from framework import demo_data
    from framework.engine.batches import BatchBuilder
    from framework.engine.step import evaluate_pairs, stats
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path
    from framework.model.loading import load_tokenizer
    from framework.store import build_store

    source = demo_data.write_jsonl(demo_data.pairs(12, seed=8), tmp_path / "pairs.jsonl")
    store = build_store([str(source)], str(tmp_path / "store"), tokenizer=tiny_model_dir, num_proc=1, progress=False)
    builder = BatchBuilder(load_tokenizer(tiny_model_dir).pad_token_id, 128, 64, "pairwise", False)
    padding = [False] * 5 + [True]  # the last row of the second batch is rank padding
    batches = [builder.build(store.take(list(range(0, 6))), [False] * 6), builder.build(store.take(list(range(6, 12))), padding)]
    policy = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "p", demo_tokenizer_path(), seed=1)).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    out = evaluate_pairs(OneRank(), policy, reference, batches, beta=0.5, alpha=0.7)

    with torch.no_grad():
        pol = [stats(policy, b.tokens) for b in batches]
        ref = [stats(reference, b.tokens) for b in batches]
    keep = torch.tensor([True] * 11 + [False])
    logps, lengths = torch.cat([s.logps for s in pol])[keep], torch.cat([s.lengths for s in pol])[keep]
    ref_logps = torch.cat([s.logps for s in ref])[keep]
    expected = ranking.pairwise_metrics(logps, lengths, ref_logps, 0.5, torch.full((11,), 0.7))
    assert out["eval/pairs"] == 11
    assert out["eval/policy_accuracy"] == pytest.approx(expected["ranking_accuracy"])
    assert out["eval/policy_accuracy_mean"] == pytest.approx(expected["ranking_accuracy_mean"])
    assert out["eval/reward_accuracy"] == pytest.approx(expected["reward_accuracy"])
    assert out["eval/idealized_accuracy"] == pytest.approx(expected["idealized_ranking_accuracy"])
    ideal_margins = ranking.idealized_margins(ref_logps[:, 0] - ref_logps[:, 1], torch.full((11,), 0.7), 0.5)
    assert 0 < (ideal_margins > 0).sum() < 11  # β and α chosen so that both outcomes occur: the check has teeth
