"""TRL-style SLiC hinge (Zhao et al. 2023, arXiv 2305.10425, as in TRL `loss_type="hinge"`).

L = relu(1 − β·h) over reference-normalised log-ratios. This is β times the original SLiC calibration term
with margin δ = 1/β; the original reference-free form with its SFT regulariser is the `slic` objective.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from framework.objectives._common import check_positive, implicit_rewards, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("hinge")
class Hinge(Objective):
    """beta: inverse temperature; the hinge closes once β·h ≥ 1."""

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        check_positive("hinge", beta=beta)
        self.beta = float(beta)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        chosen, rejected = implicit_rewards(policy, reference, self.beta)
        losses = torch.relu(1.0 - (chosen - rejected))
        return ObjectiveOutput(losses, pairwise_metrics(policy, chosen, rejected))
