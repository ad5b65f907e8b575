"""Bradley–Terry reward model (Ouyang et al. 2022; TRL `reward_trainer.py`) on a scalar head.

Rewards r come from SequenceStats.rewards [B, 2] (chosen, rejected), the head's output on the last non-pad
token (`requires = ("rewards",)`); no reference model. With per-pair margin m:
    L = softplus(−(r_w − r_l − m)) + c·(r_w + r_l)²
m = `margin` plus batch["margin"] [B] when the data carries one; c = `center_coefficient` (TRL suggests
0.01) pins the reward scale's offset, which the BT likelihood leaves free.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import check_nonnegative, check_pairwise
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("bt_reward")
class BradleyTerryReward(Objective):
    """margin: constant margin m added to any per-pair batch["margin"]; center_coefficient: c ≥ 0."""

    feedback = "pairwise"
    needs_reference = False
    requires = ("rewards",)

    def __init__(self, margin: float = 0.0, center_coefficient: float = 0.0) -> None:
        super().__init__()
        check_nonnegative("bt_reward", center_coefficient=center_coefficient)
        self.margin = float(margin)
        self.center_coefficient = float(center_coefficient)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        if policy.rewards is None or policy.rewards.shape != policy.logps.shape:
            raise ValueError("bt_reward: SequenceStats.rewards must be [B, 2] (chosen, rejected) scalar-head outputs")
        chosen, rejected = policy.rewards[:, 0], policy.rewards[:, 1]
        margin = torch.full_like(chosen, self.margin)
        if batch.get("margin") is not None:
            margin = margin + torch.as_tensor(batch["margin"]).to(chosen)
        losses = F.softplus(-(chosen - rejected - margin))
        if self.center_coefficient:
            losses = losses + self.center_coefficient * (chosen + rejected) ** 2
        gap = (chosen - rejected).detach()
        both = policy.rewards.detach()
        metrics = {
            "rewards/chosen": chosen.detach(),
            "rewards/rejected": rejected.detach(),
            "rewards/margin": gap,
            "rewards/accuracy": (gap > 0).to(gap.dtype),
            "rewards/mean": both.mean(),
            "rewards/std": both.std(unbiased=False),
        }
        return ObjectiveOutput(losses, metrics)
