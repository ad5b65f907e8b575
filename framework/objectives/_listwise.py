"""Helpers for listwise objectives: list validation, masking and ranking metrics (not an objective)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from framework.objectives._common import require_key
from framework.objectives.base import SequenceStats

Tensor = torch.Tensor


def list_inputs(policy: SequenceStats, batch: Mapping[str, Any], objective: str) -> Tuple[Tensor, Tensor]:
    """Labels ψ [B, K] (higher is better, in the logps dtype) and the validity mask [B, K] (bool)."""
    labels = torch.as_tensor(require_key(batch, "scores", objective)).to(policy.logps)
    if labels.shape != policy.logps.shape:
        raise ValueError(f"{objective}: scores {tuple(labels.shape)} must match logps {tuple(policy.logps.shape)}")
    mask = batch.get("mask")
    if mask is None:
        mask = torch.ones_like(labels, dtype=torch.bool)
    else:
        mask = torch.as_tensor(mask, device=labels.device).bool()
        if mask.shape != labels.shape:
            raise ValueError(f"{objective}: mask {tuple(mask.shape)} must match scores {tuple(labels.shape)}")
    return labels, mask


def ordered_pairs(labels: Tensor, mask: Tensor) -> Tensor:
    """[B, K, K] bool: entry (i, j) is True when both items are valid and ψ_i > ψ_j (ties give no pair)."""
    valid = mask.unsqueeze(2) & mask.unsqueeze(1)
    return valid & (labels.unsqueeze(2) > labels.unsqueeze(1))


def sort_by(values: Tensor, mask: Tensor) -> Tensor:
    """Permutation [B, K] sorting valid items by `values` descending, invalid items last.

    The sort is stable, so ties keep list order: deterministic, and a dataset that wants random tie-breaking
    shuffles its lists.
    """
    keyed = values.detach().masked_fill(~mask, float("-inf"))
    return torch.sort(keyed, dim=1, descending=True, stable=True).indices


def listwise_metrics(model_scores: Tensor, labels: Tensor, mask: Tensor) -> Dict[str, Tensor]:
    """Per-list ([B]) ranking metrics, detached.

    `ranking/pair_accuracy`: share of strictly ordered label pairs the model scores order the same way
    (NaN for a list without such pairs). `ranking/top1_accuracy`: the model's best item has the top label.
    """
    scores = model_scores.detach()
    pairs = ordered_pairs(labels, mask)
    agree = pairs & (scores.unsqueeze(2) > scores.unsqueeze(1))
    n_pairs = pairs.sum(dim=(1, 2)).to(scores.dtype)
    pair_accuracy = agree.sum(dim=(1, 2)).to(scores.dtype) / n_pairs  # 0/0 = NaN: no ordered pairs
    best = scores.masked_fill(~mask, float("-inf")).argmax(dim=1, keepdim=True)
    top_label = labels.masked_fill(~mask, float("-inf")).max(dim=1).values
    top1 = (labels.gather(1, best).squeeze(1) == top_label).to(scores.dtype)
    return {
        "ranking/pair_accuracy": pair_accuracy,
        "ranking/top1_accuracy": top1,
        "scores/mean": scores.masked_fill(~mask, 0.0).sum(1) / mask.sum(1).clamp(min=1),
        "list_size": mask.sum(1).to(scores.dtype),
    }


def masked_fill_min(values: Tensor, keep: Tensor) -> Tensor:
    """Fill dropped entries with the dtype's most negative finite value: exp() gives 0 and, unlike −inf,
    no NaN reaches the gradient of logsumexp/log_softmax."""
    return values.masked_fill(~keep, torch.finfo(values.dtype).min)


def plackett_luce_terms(sorted_scores: Tensor, sorted_mask: Tensor) -> Tensor:
    """[B, K] terms logsumexp(s_k, …, s_n) − s_k of the Plackett–Luce NLL of the given order.

    Positions are already in label order (best first) with invalid items last; the last valid position's
    term is exactly 0 and is dropped, as are invalid positions.
    """
    k = sorted_scores.shape[1]
    later = torch.ones(k, k, dtype=torch.bool, device=sorted_scores.device).triu()  # (row k, col j): j ≥ k
    keep = later & sorted_mask.unsqueeze(1)
    tail = torch.logsumexp(masked_fill_min(sorted_scores.unsqueeze(1).expand(-1, k, -1), keep), dim=2)
    n_valid = sorted_mask.sum(1, keepdim=True)
    positions = torch.arange(k, device=sorted_scores.device).unsqueeze(0)
    counted = sorted_mask & (positions < n_valid - 1)
    return torch.where(counted, tail - sorted_scores, torch.zeros_like(tail))
