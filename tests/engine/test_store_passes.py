"""Model passes over a store on Ray workers: reference log-probs, self-samples, aligned-LM log-probs."""

from __future__ import annotations

import pytest
import torch

from framework.objectives import SequenceStats, build_objective

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory, tiny_model_dir):
    from framework import demo_data
    from framework.store import build_store

    tmp = tmp_path_factory.mktemp("passes")
    source = demo_data.write_jsonl(demo_data.pairs(20, seed=9), tmp / "pairs.jsonl")
    return build_store([str(source)], str(tmp / "store"), tokenizer=tiny_model_dir, max_prompt_tokens=64,
                       max_response_tokens=128, progress=False)


def _live_and_stored(store, model_dir, with_stored=True):
    from framework.engine.batches import BatchBuilder
    from framework.engine.step import stats
    from framework.model.loading import load_causal_lm, load_tokenizer

    pad = load_tokenizer(model_dir).pad_token_id
    rows = list(range(store.num_rows))
    live_builder = BatchBuilder(pad, 128, 64, "pairwise", False)
    stored_builder = BatchBuilder(pad, 128, 64, "pairwise", True)
    with torch.no_grad():
        live = stats(load_causal_lm(model_dir).eval(), live_builder.build(store.take(rows), [False] * len(rows)).tokens)
    if not with_stored:
        return live, None
    stored = stored_builder.build(store.take(rows), [False] * len(rows)).stored_reference
    return live, SequenceStats(**stored)


def test_add_reference_matches_live_reference_loss(pair_store, tiny_model_dir, ray_local):
    from framework.cluster.reference import stored_reference_matches
    from framework.cluster.store_passes import add_reference
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path
    from framework.store import open_store

    version = add_reference(str(pair_store.root), tiny_model_dir, max_length=128, max_prompt_length=64)
    assert version.version != pair_store.version and open_store(str(pair_store.root)).version == version.version
    live, stored = _live_and_stored(version, tiny_model_dir)
    assert torch.allclose(live.logps.double(), stored.logps.double(), atol=1e-4)
    assert torch.equal(live.lengths, stored.lengths)
    # A policy different from the reference: the DPO loss with stored and live reference agree to 1e-5.
    policy = SequenceStats(live.logps + torch.randn_like(live.logps), live.lengths)
    dpo = build_objective("dpo", beta=0.1)
    assert torch.allclose(dpo.loss(policy, live, {}).losses, dpo.loss(policy, stored, {}).losses, atol=1e-5)
    assert stored_reference_matches(version, tiny_model_dir, 128, 64) == (True, "")
    other = build_tiny_llama(version.root.parent / "other-model", demo_tokenizer_path(), seed=1)
    with pytest.raises(ValueError, match="does not match the configured reference"):
        stored_reference_matches(version, str(other), 128, 64)
    with pytest.raises(ValueError, match="max_length=128"):
        stored_reference_matches(version, tiny_model_dir, 96, 64)


def test_add_samples_and_aligned_logps(pair_store, tiny_model_dir, ray_local):
    from framework.cluster.store_passes import add_aligned_logps, add_samples

    sampled = add_samples(str(pair_store.root), tiny_model_dir, k=3, max_new_tokens=8, seed=0)
    table = sampled.table()
    samples, ids = table.column("self_samples").to_pylist(), table.column("self_sample_ids").to_pylist()
    assert len(samples) == pair_store.num_rows and all(len(s) == 3 and len(i) == 3 for s, i in zip(samples, ids))
    assert all(1 <= len(seq) <= 9 for row in ids for seq in row)
    again = add_samples(str(pair_store.root), tiny_model_dir, k=3, max_new_tokens=8, seed=0, num_workers=1)
    assert again.table().column("self_sample_ids").to_pylist() == ids  # per-row seeds: split-independent

    aligned = add_aligned_logps(str(pair_store.root), [tiny_model_dir, tiny_model_dir])
    values = aligned.table().column("aligned_logps").to_pylist()
    assert all(len(row) == 2 and all(len(v) == 2 and v[0] == pytest.approx(v[1]) for v in row) for row in values)
    live, _ = _live_and_stored(pair_store, tiny_model_dir, with_stored=False)
    first = torch.tensor([[v[0] for v in row] for row in values], dtype=torch.float64)
    assert torch.allclose(first, live.mean_logps.double(), atol=1e-4)  # same tokenizer → same per-token mean
