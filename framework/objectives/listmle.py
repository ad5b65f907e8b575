"""ListMLE / Plackett–Luce DPO ("DPO-PL", DPO paper appendix A.3; LiPO paper, arXiv 2402.01878).

Model scores s_i = β·ρ(y_i). Sort items by label ψ into π(1..n) (best first); then
L = Σ_{k=1}^{n−1} [logsumexp(s_π(k), …, s_π(n)) − s_π(k)]. With K = 2 this is DPO exactly.
Ties in ψ are broken by list order (stable sort), deterministic; shuffle lists in the data for random ties.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from framework.objectives._common import check_positive, log_ratios
from framework.objectives._listwise import list_inputs, listwise_metrics, plackett_luce_terms, sort_by
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("listmle")
class ListMLE(Objective):
    """beta: inverse temperature of s = β·ρ."""

    feedback = "listwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        check_positive("listmle", beta=beta)
        self.beta = float(beta)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels, mask = list_inputs(policy, batch, "listmle")
        scores = self.beta * log_ratios(policy, reference)
        order = sort_by(labels, mask)
        terms = plackett_luce_terms(scores.gather(1, order), mask.gather(1, order))
        return ObjectiveOutput(terms.sum(1), listwise_metrics(scores, labels, mask))
