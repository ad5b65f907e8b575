"""PRO, Preference Ranking Optimization (Song et al. 2023, arXiv 2306.17492), reference-free.

Items sorted by reward r_1 > … > r_n (batch["scores"]), scores s_k = ℓ̄_θ(y_k) (per-token means).
Dynamic temperatures from the authors' code: T_k^i = r_k − r_i for i > k and T_k^k = max_{i>k} T_k^i;
L_rank = Σ_{k=1}^{n−1} [log(e^{s_k·T_k^k} + Σ_{i>k} e^{s_i·T_k^i}) − s_k·T_k^k],
L = L_rank + λ_sft·(n−1)²·(−ℓ_θ(y_1)), the SFT term on the *summed* log-prob of the top-reward response.
Per-example n is the list's valid size. Normalise rewards: their scale is the effective temperature.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from framework.objectives._common import check_nonnegative
from framework.objectives._listwise import list_inputs, listwise_metrics, masked_fill_min, sort_by
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective

Tensor = torch.Tensor


def dynamic_temperatures(sorted_rewards: Tensor, sorted_mask: Tensor) -> Tensor:
    """[B, K, K] temperatures T[k, i] = r_k − r_i for valid i > k, T[k, k] = max_{i>k} T[k, i], else 0."""
    k = sorted_rewards.shape[1]
    later = torch.ones(k, k, dtype=torch.bool, device=sorted_rewards.device).triu(diagonal=1)
    keep = later & sorted_mask.unsqueeze(1) & sorted_mask.unsqueeze(2)
    gaps = (sorted_rewards.unsqueeze(2) - sorted_rewards.unsqueeze(1)).masked_fill(~keep, 0.0)
    diagonal = gaps.max(dim=2).values  # gaps ≥ 0 after sorting, so 0 fill never wins over a real pair
    return gaps + torch.diag_embed(diagonal)


def ranking_terms(sorted_scores: Tensor, temperatures: Tensor, sorted_mask: Tensor) -> Tensor:
    """[B, K] terms log(e^{s_k T_kk} + Σ_{i>k} e^{s_i T_ki}) − s_k T_kk for k < n−1 (0 elsewhere)."""
    k = sorted_scores.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=sorted_scores.device).triu()
    keep = upper & sorted_mask.unsqueeze(1) & sorted_mask.unsqueeze(2)
    logits = sorted_scores.unsqueeze(1) * temperatures  # row k, column i: s_i·T_k^i
    own = torch.diagonal(logits, dim1=1, dim2=2)
    terms = torch.logsumexp(masked_fill_min(logits, keep), dim=2) - own
    positions = torch.arange(k, device=sorted_scores.device).unsqueeze(0)
    counted = sorted_mask & (positions < sorted_mask.sum(1, keepdim=True) - 1)
    return torch.where(counted, terms, torch.zeros_like(terms))


@register_objective("pro_rank")
class PRORank(Objective):
    """sft_weight: λ_sft (0.05 in the authors' HH script; their config default is 2)."""

    feedback = "listwise"
    needs_reference = False

    def __init__(self, sft_weight: float = 0.05) -> None:
        super().__init__()
        check_nonnegative("pro_rank", sft_weight=sft_weight)
        self.sft_weight = float(sft_weight)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        rewards, mask = list_inputs(policy, batch, "pro_rank")
        order = sort_by(rewards, mask)
        sorted_mask = mask.gather(1, order)
        temperatures = dynamic_temperatures(rewards.gather(1, order), sorted_mask)
        rank_terms = ranking_terms(policy.mean_logps.gather(1, order), temperatures, sorted_mask)
        rank_loss = rank_terms.sum(1)
        n_minus_1 = (sorted_mask.sum(1) - 1).clamp(min=0).to(rank_loss.dtype)
        sft_loss = -policy.logps.gather(1, order[:, :1]).squeeze(1)
        losses = rank_loss + self.sft_weight * n_minus_1**2 * sft_loss
        metrics = listwise_metrics(policy.mean_logps, rewards, mask)
        metrics.update({"rank_loss": rank_loss.detach(), "sft_loss": sft_loss.detach()})
        return ObjectiveOutput(losses, metrics)
