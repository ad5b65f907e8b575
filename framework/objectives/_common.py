"""Helpers shared by objective modules (not an objective itself)."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from framework.objectives.base import SequenceStats

Tensor = torch.Tensor


def log_ratios(policy: SequenceStats, reference: Optional[SequenceStats], mean: bool = False) -> Tensor:
    """ρ = ℓ_θ − ℓ_ref per response ([B, K]); with `mean`, per-token means ρ/|y|."""
    if reference is None:
        raise ValueError("this objective needs reference log-probs, got reference=None")
    if mean:
        return policy.mean_logps - reference.mean_logps
    return policy.logps - reference.logps


def pairwise_metrics(policy: SequenceStats, chosen_rewards: Tensor, rejected_rewards: Tensor) -> Dict[str, Tensor]:
    """The default pairwise metrics (OBJECTIVES.md §1b), all detached and per example ([B])."""
    margin = (chosen_rewards - rejected_rewards).detach()
    return {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards.detach(),
        "rewards/margin": margin,
        "rewards/accuracy": (margin > 0).to(margin.dtype),
        "logps/chosen": policy.logps[:, 0].detach(),
        "logps/rejected": policy.logps[:, 1].detach(),
    }


def check_pairwise(policy: SequenceStats) -> None:
    if policy.logps.dim() != 2 or policy.logps.shape[1] != 2:
        raise ValueError(f"pairwise objectives need logps of shape [B, 2] (chosen, rejected), got {tuple(policy.logps.shape)}")
