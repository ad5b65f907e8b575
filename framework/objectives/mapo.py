"""MaPO (Hong et al. 2024, arXiv 2406.06424), literal transplant of the diffusion objective to language models.

The paper defines MaPO for diffusion: with u = α·MSE, a bounded score s(u) = u/(eᵘ − 1) ∈ (0, 1] and
L = MSE_w − β_M·log σ(T·(s(u_w) − s(u_l))). No LM form by the authors exists (OBJECTIVES.md §2.9, §9.1);
their script calls the objective "ORPO loss", and ORPO is registered separately as `orpo`. To make `mapo`
a distinct objective we take the *literal transplant*, which is an assumption:

    u(y) = −α·ℓ̄_θ(y) ≥ 0,   L = NLL(y_w) − β_M·log σ(κ·(s(u_w) − s(u_l)))

where NLL defaults to −ℓ̄_θ(y_w) ("sequence"), `beta` is β_M and `kappa` replaces the number of diffusion
timesteps. κ = 10 makes typical score gaps O(1): per-token means of −0.5 to −3 give s between 0.86 and 0.35.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import (
    NLL_REDUCTIONS,
    check_choice,
    check_nonnegative,
    check_pairwise,
    check_positive,
    nll_losses,
    pairwise_metrics,
    token_window_stats,
)
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective

Tensor = torch.Tensor


def bounded_score(u: Tensor) -> Tensor:
    """s(u) = u / (eᵘ − 1), decreasing from s(0) = 1; u is clamped at 1e-6 so s(0) is its limit, not 0/0."""
    u = u.clamp(min=1e-6)
    return u / torch.expm1(u)


@register_objective("mapo")
class MaPO(Objective):
    """beta: β_M, weight of the margin term; alpha: α in u = −α·ℓ̄; kappa: score-gap scale; nll_reduction."""

    feedback = "pairwise"
    needs_reference = False

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, kappa: float = 10.0, nll_reduction: str = "sequence") -> None:
        super().__init__()
        check_nonnegative("mapo", beta=beta)
        check_positive("mapo", alpha=alpha, kappa=kappa)
        check_choice("mapo", "nll_reduction", nll_reduction, NLL_REDUCTIONS)
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.kappa = float(kappa)
        self.nll_reduction = nll_reduction

    def window_stats(self, batch: Mapping[str, Any]) -> Dict[str, Tensor]:
        return token_window_stats(batch, 0) if self.nll_reduction == "token" else {}

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        scores = bounded_score(-self.alpha * policy.mean_logps)
        score_gap = scores[:, 0] - scores[:, 1]
        margin_loss = self.beta * F.softplus(-self.kappa * score_gap)
        mean_tokens = self.window_mean("tokens", batch, policy) if self.nll_reduction == "token" else None
        nll = nll_losses(policy, 0, self.nll_reduction, mean_tokens)
        metrics = pairwise_metrics(policy, scores[:, 0], scores[:, 1])
        metrics.update({"score_gap": score_gap.detach(), "nll_loss": nll.detach(), "margin_loss": margin_loss.detach()})
        return ObjectiveOutput(nll + margin_loss, metrics)
