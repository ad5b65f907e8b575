"""KTO (Ethayarajh et al. 2024, arXiv 2402.01306): prospect-theoretic loss on unpaired binary feedback.

With r = ρ(y) and the reference point z₀ = max(0, mean_j[ρ(y'_j)]) over *mismatched* completions y'
(another example's completion for prompt x_j), detached:
    desirable:   λ_D·(1 − σ(β·(r − z₀)))        undesirable:   λ_U·(1 − σ(β·(z₀ − r)))
Matches TRL's `loss_type="kto"` on one batch. The mean runs over the real (non-padding) examples of the whole
optimizer step on all ranks (a window statistic, see `base.py`), so grad_accum=2 × B gives the same z₀ as
one batch of 2B; TRL takes it per micro-batch call. The trainer supplies batch["mismatched_policy"] and
batch["mismatched_reference"] (SequenceStats [B, 1]) because `requires = ("mismatched",)`; TRL builds y' by
rotating completions by one within the per-device batch, which is why a batch of one is invalid there.
Paper advice (from memory, OBJECTIVES.md §9.8): set the weights so λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3].
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from framework.objectives._binary import binary_labels, binary_metrics
from framework.objectives._common import check_nonnegative, check_positive, log_ratios, require_key
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("kto")
class KTO(Objective):
    """beta: inverse temperature; desirable_weight / undesirable_weight: λ_D / λ_U."""

    feedback = "binary"
    needs_reference = True
    requires = ("mismatched",)

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__()
        check_positive("kto", beta=beta)
        check_nonnegative("kto", desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)

    def window_stats(self, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """"kl": [Σ w·ρ(y'), Σ w] of the mismatched completions, whose mean is z₀ before clamping."""
        mismatched = log_ratios(require_key(batch, "mismatched_policy", "kto"), require_key(batch, "mismatched_reference", "kto"))
        weights = batch["weights"].to(mismatched)
        return {"kl": torch.stack([(weights * mismatched[:, 0].detach()).sum(), weights.sum()])}

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels = binary_labels(policy, batch, "kto")
        rho = log_ratios(policy, reference)[:, 0]
        z0 = self.window_mean("kl", batch, policy).detach().to(rho).clamp(min=0.0)
        desirable = self.desirable_weight * (1.0 - torch.sigmoid(self.beta * (rho - z0)))
        undesirable = self.undesirable_weight * (1.0 - torch.sigmoid(self.beta * (z0 - rho)))
        losses = torch.where(labels, desirable, undesirable)
        metrics = binary_metrics(policy, self.beta * rho, labels)
        metrics["kl"] = z0.detach()
        return ObjectiveOutput(losses, metrics)
