import math

import pytest
import torch
import torch.nn.functional as F

from framework.objectives import SequenceStats, build_objective


def _token_stats(logits, labels, mask):
    """Per-sequence sums and counts of masked-in token log-probs, as the model layer computes them."""
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    logps = (token_logps * mask).sum(1, keepdim=True)
    return SequenceStats(logps, mask.sum(1, keepdim=True).to(logits.dtype))


def _random_batch(seed, batch=5, length=9, vocab=11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.float64)
    for b, n in enumerate(torch.randint(1, length + 1, (batch,), generator=gen).tolist()):
        mask[b, :n] = 1.0
    return logits, labels, mask


def test_token_reduction_equals_cross_entropy_on_masked_tokens():
    logits, labels, mask = _random_batch(0)
    losses = build_objective("sft", reduction="token").loss(_token_stats(logits, labels, mask), None, {}).losses
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.masked_fill(mask == 0, -100).reshape(-1), ignore_index=-100)
    torch.testing.assert_close(losses.mean(), ce)


def test_sequence_reduction_is_mean_of_per_sequence_cross_entropy():
    logits, labels, mask = _random_batch(1)
    losses = build_objective("sft", reduction="sequence").loss(_token_stats(logits, labels, mask), None, {}).losses
    per_seq = [F.cross_entropy(logits[b, mask[b] > 0], labels[b, mask[b] > 0]) for b in range(len(labels))]
    torch.testing.assert_close(losses, torch.stack(per_seq))


def test_uniform_model_gives_log_vocab():
    vocab = 50
    logits = torch.zeros(3, 6, vocab, dtype=torch.float64)
    labels = torch.randint(0, vocab, (3, 6))
    for reduction in ("token", "sequence"):
        losses = build_objective("sft", reduction=reduction).loss(_token_stats(logits, labels, torch.ones(3, 6, dtype=torch.float64)), None, {}).losses
        torch.testing.assert_close(losses, torch.full((3,), math.log(vocab), dtype=torch.float64))


def test_independent_of_padding():
    logits, labels, mask = _random_batch(2)
    padded_logits = torch.cat([logits.detach(), 100 * torch.randn(5, 4, 11, dtype=torch.float64)], 1)
    padded_labels = torch.cat([labels, torch.zeros(5, 4, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(5, 4, dtype=torch.float64)], 1)
    obj = build_objective("sft")
    torch.testing.assert_close(obj.loss(_token_stats(padded_logits, padded_labels, padded_mask), None, {}).losses, obj.loss(_token_stats(logits.detach(), labels, mask), None, {}).losses)


def test_token_reduction_across_ranks_uses_the_step_window_mean_length():
    logits, labels, mask = _random_batch(3, batch=6)
    full = _token_stats(logits, labels, mask)
    obj = build_objective("sft")
    window = obj.window_stats({"weights": torch.ones(6, dtype=torch.float64), "lengths": full.lengths})["tokens"]
    means = {"tokens": window[0] / window[1]}  # what the trainer passes after summing over ranks
    per_rank = []
    for shard in (slice(0, 2), slice(2, 6)):  # two "ranks" with unequal counts
        stats = SequenceStats(full.logps[shard], full.lengths[shard])
        per_rank.append(obj.loss(stats, None, {"window_means": means}).losses)
    token_mean = -full.logps.sum() / full.lengths.sum()
    torch.testing.assert_close(torch.cat(per_rank).mean(), token_mean)


def test_padding_rows_do_not_enter_the_mean_length():
    logits, labels, mask = _random_batch(4, batch=4)
    stats = _token_stats(logits, labels, mask)
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    losses = build_objective("sft").loss(stats, None, {"weights": weights}).losses
    token_mean = -stats.logps[:3].sum() / stats.lengths[:3].sum()
    torch.testing.assert_close((losses * weights).sum() / weights.sum(), token_mean)


def test_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        build_objective("sft", reduction="sum")
