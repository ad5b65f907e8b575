"""DPO (Rafailov et al. 2023, arXiv 2305.18290): L = softplus(−β·h), h = ρ(y_w) − ρ(y_l)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F

from framework.objectives._common import check_positive, implicit_rewards, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("dpo")
class DPO(Objective):
    """Sigmoid DPO over summed log-probs; matches TRL's `loss_type="sigmoid"`.

    beta: inverse temperature of the implicit reward β·ρ (TRL default 0.1).
    """

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        check_positive("dpo", beta=beta)
        self.beta = float(beta)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        chosen, rejected = implicit_rewards(policy, reference, self.beta)
        losses = F.softplus(-(chosen - rejected))
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
