"""LiPO-λ (Liu et al. 2024, arXiv 2402.01878): LambdaLoss with DCG lambda weights over DPO-style scores.

Model scores s_i = β·ρ(y_i); labels ψ_i (higher is better). With model ranks τ (1-based position when s is
sorted descending, detached), gains G = 2^ψ − 1 and discounts D(τ) = log₂(1 + τ):
    Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|,   L = Σ_{ψ_i > ψ_j} Δ_ij·softplus(−(s_i − s_j)).
With K = 2 and binary labels this is (1 − 1/log₂3)·DPO ≈ 0.369·DPO.

Unconfirmed (OBJECTIVES.md §9.4): the paper's β, label construction and normalisation. Chosen: β = 0.1 and
`normalization="none"` (a plain sum over pairs, as the issue asks); "pairs" divides by the number of ordered
pairs, "ideal_dcg" by the list's ideal DCG Σ_k G_(k)/D(k) (the NDCG form of LambdaLoss). Ties in s are
ranked in list order (stable sort); ties in ψ contribute nothing.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import check_choice, check_positive, log_ratios
from framework.objectives._listwise import list_inputs, listwise_metrics, ordered_pairs, sort_by
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective

NORMALIZATIONS = ("none", "pairs", "ideal_dcg")


def model_ranks(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-based rank of every item under descending model scores (invalid items ranked after valid ones)."""
    order = sort_by(scores, mask)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=scores.dtype).expand_as(scores)
    return torch.empty_like(scores).scatter_(1, order, positions)


@register_objective("lipo_lambda")
class LiPOLambda(Objective):
    """beta: inverse temperature of s = β·ρ; normalization: "none" (default), "pairs" or "ideal_dcg"."""

    feedback = "listwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1, normalization: str = "none") -> None:
        super().__init__()
        check_positive("lipo_lambda", beta=beta)
        check_choice("lipo_lambda", "normalization", normalization, NORMALIZATIONS)
        self.beta = float(beta)
        self.normalization = normalization

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels, mask = list_inputs(policy, batch, "lipo_lambda")
        scores = self.beta * log_ratios(policy, reference)
        with torch.no_grad():
            inv_discount = 1.0 / torch.log2(1.0 + model_ranks(scores, mask))
            gains = torch.exp2(labels) - 1.0
            weights = (gains.unsqueeze(2) - gains.unsqueeze(1)).abs() * (inv_discount.unsqueeze(2) - inv_discount.unsqueeze(1)).abs()
            pairs = ordered_pairs(labels, mask)
            weights = weights * pairs
            weights = weights / self._normalizer(gains, mask, pairs).unsqueeze(1).unsqueeze(2)
        # Masked items can hold any value (even -inf padding); zero them so no NaN reaches the sum.
        safe_scores = scores.masked_fill(~mask, 0.0)
        pair_logits = safe_scores.unsqueeze(2) - safe_scores.unsqueeze(1)
        losses = (weights * F.softplus(-pair_logits)).sum(dim=(1, 2))
        return ObjectiveOutput(losses, listwise_metrics(scores, labels, mask))

    def _normalizer(self, gains: torch.Tensor, mask: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        if self.normalization == "pairs":
            return pairs.sum(dim=(1, 2)).to(gains.dtype).clamp(min=1.0)
        if self.normalization == "ideal_dcg":
            ideal = gains.masked_fill(~mask, 0.0).sort(dim=1, descending=True).values
            ranks = torch.arange(1, gains.shape[1] + 1, device=gains.device, dtype=gains.dtype)
            return (ideal / torch.log2(1.0 + ranks)).sum(1).clamp(min=torch.finfo(gains.dtype).tiny)
        return torch.ones(gains.shape[0], dtype=gains.dtype, device=gains.device)

