"""SimPO (Meng et al. 2024, arXiv 2405.14734), reference-free.

L = softplus(−(β·ℓ̄_θ(y_w) − β·ℓ̄_θ(y_l) − γ)) + λ_sft·(−ℓ̄_θ(y_w)).
`gamma` is the absolute margin γ (the authors' newer configs give γ/β; multiply). Defaults are the authors'
Mistral-7B-base config (β = 2.0, γ = 1.6); TRL's β = 0.1 is far too small for SimPO. The optional SFT term
uses the per-token mean, as the authors' code does.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F

from framework.objectives._common import check_nonnegative, check_pairwise, check_positive, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("simpo")
class SimPO(Objective):
    """beta: scale of the mean log-prob reward; gamma: target reward margin γ ≥ 0; sft_weight: λ_sft ≥ 0."""

    feedback = "pairwise"
    needs_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.6, sft_weight: float = 0.0) -> None:
        super().__init__()
        check_positive("simpo", beta=beta)
        check_nonnegative("simpo", gamma=gamma, sft_weight=sft_weight)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.sft_weight = float(sft_weight)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        mean_logps = policy.mean_logps
        chosen, rejected = self.beta * mean_logps[:, 0], self.beta * mean_logps[:, 1]
        losses = F.softplus(-(chosen - rejected - self.gamma))
        if self.sft_weight:
            losses = losses - self.sft_weight * mean_logps[:, 0]
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
