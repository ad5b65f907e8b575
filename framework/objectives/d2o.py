"""D2O, Distributional Dispreference Optimization (Duan et al. 2024, arXiv 2403.03419, Eq. 3 of v2).

Only human negatives y_l are labelled; K self-samples y_1..y_K ~ π_init(·|x) are generated before training
(`alignray store add-samples`). Column layout (`requires = ("self_samples",)`): column 0 is the human
negative, columns 1..K the self-samples; optional batch["mask"] [B, 1+K] marks valid columns (column 0
must be valid, at least one sample must be). Reference log-probs: the samples' come from π_r⁻ and the
negative's from π_r⁺; in the paper both are the initial model, so one reference SequenceStats serves.
    L = −log σ((β/K)·Σ_k [ℓ_θ(y_k) − ℓ_r⁻(y_k)] − α·[ℓ_θ(y_l) − ℓ_r⁺(y_l)])
with K the number of valid samples per example. Unconfirmed (OBJECTIVES.md §9.7): whether later versions
refresh the samples or update π_r⁻ online; here both are fixed.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import check_positive, log_ratios
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("d2o")
class D2O(Objective):
    """beta: weight on the self-samples' mean log-ratio; alpha: weight on the negative's log-ratio."""

    feedback = "binary"
    needs_reference = True
    requires = ("self_samples",)

    def __init__(self, beta: float = 0.1, alpha: float = 0.1) -> None:
        super().__init__()
        check_positive("d2o", beta=beta, alpha=alpha)
        self.beta = float(beta)
        self.alpha = float(alpha)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        if policy.logps.dim() != 2 or policy.logps.shape[1] < 2:
            raise ValueError(f"d2o: logps must be [B, 1+K] (negative, K≥1 self-samples), got {tuple(policy.logps.shape)}")
        rho = log_ratios(policy, reference)
        mask = batch.get("mask")
        mask = torch.ones_like(rho, dtype=torch.bool) if mask is None else torch.as_tensor(mask, device=rho.device).bool()
        if mask.shape != rho.shape or not mask[:, 0].all() or not mask[:, 1:].any(dim=1).all():
            raise ValueError("d2o: mask must be [B, 1+K] with column 0 (the negative) and at least one sample valid")
        samples = mask[:, 1:]
        sample_mean = rho[:, 1:].masked_fill(~samples, 0.0).sum(1) / samples.sum(1)
        negative = rho[:, 0]
        sample_reward, negative_reward = self.beta * sample_mean, self.alpha * negative
        losses = F.softplus(-(sample_reward - negative_reward))
        margin = (sample_reward - negative_reward).detach()
        metrics = {
            "rewards/samples": sample_reward.detach(),
            "rewards/negative": negative_reward.detach(),
            "rewards/margin": margin,
            "rewards/accuracy": (margin > 0).to(margin.dtype),
            "logps/negative": policy.logps[:, 0].detach(),
            "logps/samples": policy.logps[:, 1:].masked_fill(~samples, 0.0).sum(1).detach() / samples.sum(1),
        }
        return ObjectiveOutput(losses, metrics)
