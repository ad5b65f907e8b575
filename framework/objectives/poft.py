"""PoFT, preference-oriented SFT (Fan et al., AAAI 2025, arXiv 2412.12865, Eqs. 5–8), reference-free.

L = −log σ(ℓ̄_θ(y) − (1/M)·Σ_j ℓ̄_j(y)), with ℓ̄_j the per-token mean log-probs of y under M aligned LMs
(each with its own tokeniser), precomputed into the store and passed as batch["aligned_logps"] [B, M]. No β
in the paper. The gradient is the per-token-mean CE gradient times τ = σ(mean_j ℓ̄_j − ℓ̄_θ), logged as the
data-quality weight `tau`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import require_key
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("poft")
class PoFT(Objective):
    """No hyperparameters: the aligned LMs' mean log-probs set the per-example weight."""

    feedback = "sft"
    needs_reference = False
    requires = ("aligned_logps",)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        aligned = torch.as_tensor(require_key(batch, "aligned_logps", "poft")).to(policy.logps)
        if aligned.dim() != 2 or aligned.shape[0] != policy.logps.shape[0] or aligned.shape[1] < 1:
            raise ValueError(f"poft: aligned_logps must be [B, M] with M ≥ 1, got {tuple(aligned.shape)}")
        margin = policy.mean_logps[:, 0] - aligned.mean(1)
        losses = F.softplus(-margin)
        metrics = {"tau": torch.sigmoid(-margin).detach(), "margin": margin.detach(), "mean_logps": policy.mean_logps[:, 0].detach()}
        return ObjectiveOutput(losses, metrics)
