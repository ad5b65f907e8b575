"""Supervised fine-tuning: negative log-likelihood of the demonstration (column 0).

Reduction (`reduction`): "token" (default) makes the trainer's global example mean equal the token mean
over the step's real examples, Σ(−ℓ)/Σ|y|, as TRL's SFT does with `num_items_in_batch` (see
`_common.nll_losses`; exact for any split over ranks and accumulation micro-batches, because the mean length
is a step-wide window statistic). "sequence" averages −ℓ̄ per example, so every example weighs the same
whatever its length. They differ on variable-length data; dividing by a per-micro-batch token count instead
would bias gradient accumulation.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from framework.objectives._common import NLL_REDUCTIONS, check_choice, nll_losses, token_window_stats
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("sft")
class SFT(Objective):
    """reduction: "token" (global token mean) or "sequence" (mean of per-sequence token means)."""

    feedback = "sft"
    needs_reference = False

    def __init__(self, reduction: str = "token") -> None:
        super().__init__()
        check_choice("sft", "reduction", reduction, NLL_REDUCTIONS)
        self.reduction = reduction

    def window_stats(self, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        return token_window_stats(batch, 0) if self.reduction == "token" else {}

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        mean_tokens = self.window_mean("tokens", batch, policy) if self.reduction == "token" else None
        losses = nll_losses(policy, 0, self.reduction, mean_tokens)
        metrics = {"logps": policy.logps[:, 0].detach(), "mean_logps": policy.mean_logps[:, 0].detach()}
        return ObjectiveOutput(losses, metrics)
