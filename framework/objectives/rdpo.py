"""Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409): the unbiased de-noised DPO loss.

With ℓ(h) = softplus(−β·h) and known flip rate ε:  L_ε(h) = [(1−ε)·ℓ(h) − ε·ℓ(−h)] / (1 − 2ε).
It is unbiased, (1−ε)·L_ε(h) + ε·L_ε(−h) = ℓ(h), and unbounded below: negative losses are expected.
Matches TRL's `loss_type="robust"`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F

from framework.objectives._common import check_positive, implicit_rewards, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("rdpo")
class RobustDPO(Objective):
    """beta: inverse temperature; label_smoothing: known flip rate ε ∈ [0, 0.5) (the loss diverges at 0.5)."""

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1) -> None:
        super().__init__()
        check_positive("rdpo", beta=beta)
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"rdpo: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        chosen, rejected = implicit_rewards(policy, reference, self.beta)
        logits = chosen - rejected
        eps = self.label_smoothing
        losses = ((1 - eps) * F.softplus(-logits) - eps * F.softplus(logits)) / (1 - 2 * eps)
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
