"""SLiC-HF, original reference-free form (Zhao et al. 2023, arXiv 2305.10425).

L = max(0, δ − ℓ_θ(y_w) + ℓ_θ(y_l)) − λ·ℓ_θ(y_ref), over summed log-probs, with y_ref = y_w (the chosen
response stands in for the SFT target, as in SLiC-HF's "sample and rank" data where the best candidate is
the target).

Unconfirmed (OBJECTIVES.md §9.3): the paper's δ and λ defaults. Chosen here: δ = 1.0 (the common value)
and λ = 0.1 (`sft_weight`); tune both.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from framework.objectives._common import check_nonnegative, check_pairwise, check_positive, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("slic")
class SLiC(Objective):
    """delta: calibration margin δ on summed log-probs; sft_weight: λ of the −ℓ_θ(y_w) regulariser."""

    feedback = "pairwise"
    needs_reference = False

    def __init__(self, delta: float = 1.0, sft_weight: float = 0.1) -> None:
        super().__init__()
        check_positive("slic", delta=delta)
        check_nonnegative("slic", sft_weight=sft_weight)
        self.delta = float(delta)
        self.sft_weight = float(sft_weight)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        chosen, rejected = policy.logps[:, 0], policy.logps[:, 1]
        calibration = torch.relu(self.delta - chosen + rejected)
        losses = calibration - self.sft_weight * chosen
        metrics = pairwise_metrics(policy, chosen, rejected)
        metrics["calibration_loss"] = calibration.detach()
        return ObjectiveOutput(losses, metrics)
