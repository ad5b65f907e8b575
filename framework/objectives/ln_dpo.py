"""Length-normalised DPO (LN-DPO; "A Hitchhiker's Guide to Human Alignment with *PO", arXiv 2407.15229).

L = softplus(−β·(ρ(y_w)/|y_w| − ρ(y_l)/|y_l|)); matches TRL's `loss_type="sigmoid_norm"`.

Unconfirmed (OBJECTIVES.md §9.2): only the abstract was available, so the formula is the TRL form and the β
default is unknown. β must be about |y| times DPO's; chosen default β = 1.0, the low end of the 1–10 range.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F

from framework.objectives._common import check_pairwise, check_positive, log_ratios, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("ln_dpo")
class LengthNormalizedDPO(Objective):
    """beta: inverse temperature on per-token mean log-ratios."""

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        check_positive("ln_dpo", beta=beta)
        self.beta = float(beta)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        rho = log_ratios(policy, reference, mean=True)
        chosen, rejected = self.beta * rho[:, 0], self.beta * rho[:, 1]
        losses = F.softplus(-(chosen - rejected))
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
