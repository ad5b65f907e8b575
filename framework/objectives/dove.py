"""DOVE / joint preference optimisation (Bansal et al. 2024, arXiv 2404.00530).

Pairs (x_w, y_w) ≻ (x_l, y_l) whose prompts may differ:
L = softplus(−β·[(ℓ_θ(y_w|x_w) − ℓ_ref(y_w|x_w)) − (ℓ_θ(y_l|x_l) − ℓ_ref(y_l|x_l))]).
Column 0 holds (x_w, y_w), column 1 (x_l, y_l); each column carries its own prompt in the store.
`joint=True` also counts the prompt tokens, log π(x, y) = log π(x) + log π(y|x), so it needs
`SequenceStats.prompt_logps` for policy and reference. The partition function Z(x) does not cancel when
x_w ≠ x_l; like the authors' code, the loss ignores it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F

from framework.objectives._common import check_pairwise, check_positive, log_ratios, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("dove")
class DOVE(Objective):
    """beta: inverse temperature; joint: include prompt log-probs (needs "prompt_logps")."""

    feedback = "pairwise"
    needs_reference = True
    requires = ("prompt_logps",)

    def __init__(self, beta: float = 0.1, joint: bool = False) -> None:
        super().__init__()
        check_positive("dove", beta=beta)
        self.beta = float(beta)
        self.joint = bool(joint)
        # Conditional mode needs nothing beyond the responses' log-probs.
        self.requires = ("prompt_logps",) if self.joint else ()

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        rho = log_ratios(policy, reference)
        if self.joint:
            if policy.prompt_logps is None or reference.prompt_logps is None:
                raise ValueError("dove: joint=True needs prompt_logps in both policy and reference SequenceStats")
            rho = rho + (policy.prompt_logps - reference.prompt_logps)
        chosen, rejected = self.beta * rho[:, 0], self.beta * rho[:, 1]
        losses = F.softplus(-(chosen - rejected))
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
