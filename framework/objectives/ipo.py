"""IPO (Azar et al. 2023, arXiv 2310.12036): L = (h̃ − 1/(2τ))², τ passed as `beta`.

`length_normalized=True` (default, TRL-compatible) uses per-token mean log-ratios h̃ = ρ̄(y_w) − ρ̄(y_l);
TRL says the IPO authors confirmed this form. `False` uses the paper's summed log-ratios, whose squared loss
explodes on long responses.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from framework.objectives._common import check_pairwise, check_positive, log_ratios, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("ipo")
class IPO(Objective):
    """beta: the regularisation τ (target margin 1/(2τ)); length_normalized: use per-token mean log-ratios."""

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1, length_normalized: bool = True) -> None:
        super().__init__()
        check_positive("ipo", beta=beta)
        self.beta = float(beta)
        self.length_normalized = bool(length_normalized)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        rho = log_ratios(policy, reference, mean=self.length_normalized)
        losses = (rho[:, 0] - rho[:, 1] - 1.0 / (2.0 * self.beta)) ** 2
        # Rewards are logged as β·ρ over summed log-probs, as TRL does, whatever the loss uses.
        summed = log_ratios(policy, reference)
        return ObjectiveOutput(losses, pairwise_metrics(policy, self.beta * summed[:, 0], self.beta * summed[:, 1]))
