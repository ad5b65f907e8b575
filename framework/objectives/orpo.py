"""ORPO (Hong et al. 2024, arXiv 2403.07691), reference-free.

logodds(y) = ℓ̄_θ(y) − log(1 − exp(ℓ̄_θ(y)));  L = NLL(y_w) − λ·log σ(logodds(y_w) − logodds(y_l)), λ = `beta`.

Per-example form of the NLL (`nll_reduction`): TRL takes a token mean over all chosen tokens of the batch.
"token" (default) reproduces that token mean over the step's real examples once the trainer averages
examples, for any split over ranks and accumulation micro-batches (see `_common.nll_losses`); "sequence" uses −ℓ̄_θ(y_w) per example, so short and long responses weigh the same.
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
    log1mexp,
    nll_losses,
    pairwise_metrics,
    token_window_stats,
)
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("orpo")
class ORPO(Objective):
    """beta: weight λ of the odds-ratio term (TRL default 0.1); nll_reduction: "token" or "sequence"."""

    feedback = "pairwise"
    needs_reference = False

    def __init__(self, beta: float = 0.1, nll_reduction: str = "token") -> None:
        super().__init__()
        check_nonnegative("orpo", beta=beta)
        check_choice("orpo", "nll_reduction", nll_reduction, NLL_REDUCTIONS)
        self.beta = float(beta)
        self.nll_reduction = nll_reduction

    def window_stats(self, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        return token_window_stats(batch, 0) if self.nll_reduction == "token" else {}

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        mean_logps = policy.mean_logps
        # log(1 − p) is catastrophic in naive form as p → 1; log1mexp keeps both branches exact.
        log_odds = mean_logps - log1mexp(mean_logps)
        log_odds_ratio = log_odds[:, 0] - log_odds[:, 1]
        mean_tokens = self.window_mean("tokens", batch, policy) if self.nll_reduction == "token" else None
        nll = nll_losses(policy, 0, self.nll_reduction, mean_tokens)
        odds_ratio_loss = self.beta * F.softplus(-log_odds_ratio)
        metrics = pairwise_metrics(policy, self.beta * mean_logps[:, 0], self.beta * mean_logps[:, 1])
        metrics.update(
            {"log_odds_ratio": log_odds_ratio.detach(), "nll_loss": nll.detach(), "odds_ratio_loss": odds_ratio_loss.detach()}
        )
        return ObjectiveOutput(nll + odds_ratio_loss, metrics)
