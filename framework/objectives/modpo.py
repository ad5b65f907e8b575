"""MODPO, multi-objective DPO (Zhou et al. 2023, arXiv 2310.03708; OBJECTIVES.md §5.2).

Trains for a weighting w of M objectives from preferences of one target objective k plus margin rewards r_{−k}
of the others: L = softplus(−(1/w_k)·[β·h − w_{−k}ᵀ(r_{−k}(y_w) − r_{−k}(y_l))]), with (y_w, y_l) ordered by
objective k. Here the margin rewards are the stored per-response scores of the other objectives
(batch["objective_scores"] [B, 2, M]); rows where objective k ties carry no preference and get loss 0.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from framework.objectives._common import check_positive, log_ratios
from framework.objectives._multi import (check_weights, objective_names, objective_scores, ordered_by,
                                         preference_signs, weight_vector)
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("modpo")
class MODPO(Objective):
    """beta: inverse temperature; weights: w over the data's objectives (None = uniform); target: index k of
    the objective whose preferences are trained on (the others enter as margin rewards)."""

    feedback = "multi"
    needs_reference = True

    def __init__(self, beta: float = 0.1, weights: Optional[Sequence[float]] = None, target: int = 0) -> None:
        super().__init__()
        check_positive("modpo", beta=beta)
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"modpo: target must be an objective index >= 0, got {target!r}")
        self.beta, self.weights, self.target = float(beta), check_weights("modpo", weights), target
        if self.weights is not None and (target >= len(self.weights) or self.weights[target] <= 0):
            raise ValueError(f"modpo: the target objective's weight must be > 0 (target={target}, weights={list(self.weights)})")

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        scores = objective_scores(batch, policy, "modpo")
        names = objective_names(batch, scores.shape[2])
        if self.target >= len(names):
            raise ValueError(f"modpo: target={self.target} but the data has {len(names)} objectives ({', '.join(names)})")
        w = weight_vector("modpo", self.weights, names, policy.logps)
        signs = preference_signs(scores)[:, self.target]
        rho = log_ratios(ordered_by(policy, signs), ordered_by(reference, signs))
        ordered = torch.where((signs < 0)[:, None, None], scores.flip(1), scores)
        others = [i for i in range(len(names)) if i != self.target]
        reward_margin = ((ordered[:, 0, others] - ordered[:, 1, others]) * w[others]).sum(1)
        h = rho[:, 0] - rho[:, 1]
        logits = (self.beta * h - reward_margin) / w[self.target]
        losses = torch.where(signs == 0, torch.zeros_like(logits), F.softplus(-logits))
        margin = (self.beta * h).detach()
        metrics = {"rewards/margin": margin, "rewards/accuracy": (margin > 0).to(margin.dtype),
                   "modpo/reward_margin": reward_margin.detach(), "modpo/logits": logits.detach()}
        return ObjectiveOutput(losses, metrics)
