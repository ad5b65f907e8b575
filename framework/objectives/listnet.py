"""ListNet / softmax cross-entropy (Cao et al. 2007; TF-Ranking "softmax" loss), over DPO-style scores.

Model scores s_i = β·ρ(y_i); L = −Σ_i q_i·log softmax(s)_i over the valid items. Targets q:
"softmax": softmax(ψ/T) (ListNet top-1, T = `temperature`); "proportional": ψ_i/Σ_j ψ_j (needs ψ ≥ 0).
Shift-invariant in s, so prompt-level constants such as log Z(x) cancel; ∂L/∂s = softmax(s) − q.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from framework.objectives._common import check_choice, check_positive, log_ratios
from framework.objectives._listwise import list_inputs, listwise_metrics, masked_fill_min
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective

TARGETS = ("softmax", "proportional")


@register_objective("listnet")
class ListNet(Objective):
    """beta: inverse temperature of s = β·ρ; target: "softmax" or "proportional"; temperature: T of the softmax target."""

    feedback = "listwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1, target: str = "softmax", temperature: float = 1.0) -> None:
        super().__init__()
        check_positive("listnet", beta=beta, temperature=temperature)
        check_choice("listnet", "target", target, TARGETS)
        self.beta = float(beta)
        self.target = target
        self.temperature = float(temperature)

    def targets(self, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The target distribution q [B, K] over valid items (0 on invalid ones)."""
        if self.target == "softmax":
            return torch.softmax(masked_fill_min(labels / self.temperature, mask), dim=1) * mask
        labels = labels.masked_fill(~mask, 0.0)
        if (labels < 0).any():
            raise ValueError("listnet: target='proportional' needs non-negative scores")
        total = labels.sum(1, keepdim=True)
        if (total <= 0).any():
            raise ValueError("listnet: target='proportional' needs every list to have a positive score sum")
        return labels / total

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels, mask = list_inputs(policy, batch, "listnet")
        scores = self.beta * log_ratios(policy, reference)
        log_probs = torch.log_softmax(masked_fill_min(scores, mask), dim=1)
        q = self.targets(labels, mask)
        losses = -(q * log_probs.masked_fill(~mask, 0.0)).sum(1)
        return ObjectiveOutput(losses, listwise_metrics(scores, labels, mask))
