"""Conservative DPO (Mitchell, "A note on DPO with noisy preferences", 2023): DPO with label smoothing.

L = (1−ε)·softplus(−β·h) + ε·softplus(β·h). The minimiser is the finite margin h* = log((1−ε)/ε)/β.
TRL 1.16 no longer applies `label_smoothing` inside `loss_type="sigmoid"` (older TRL did); here it is its
own objective so the flag never changes DPO silently.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F

from framework.objectives._common import check_positive, implicit_rewards, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("cdpo")
class ConservativeDPO(Objective):
    """beta: inverse temperature; label_smoothing: assumed flip probability ε ∈ [0, 0.5)."""

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1) -> None:
        super().__init__()
        check_positive("cdpo", beta=beta)
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"cdpo: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        chosen, rejected = implicit_rewards(policy, reference, self.beta)
        logits = chosen - rejected
        eps = self.label_smoothing
        losses = (1 - eps) * F.softplus(-logits) + eps * F.softplus(logits)
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
