"""PAL pluralistic reward model (arXiv 2406.08469; OBJECTIVES.md §7.2): a user's reward is how close a response's
embedding lies to that user's ideal point, trained with the Bradley–Terry loss.

Pure tensors in, per-example losses out; the parameters (item map f, prototypes, per-user mixture weights) live in
framework/model/pal.py, which produces item embeddings f(x, y) [B, K, D] and ideal points a_u [B, D]:
    PAL-A (variant "a")  r_u(x, y) = −scale · ‖f(x, y) − a_u‖            (Euclidean distance)
    PAL-B (variant "b")  r_u(x, y) =  scale · cos(f(x, y), a_u(x))
    L = softplus(−(r_u(y_w) − r_u(y_l)))                                 per pair, as `bt_reward` with margin 0
`loss` takes those rewards as SequenceStats.rewards [B, 2] (chosen, rejected), so the contract is bt_reward's.
With one prototype every user shares one ideal point and PAL is a single BT reward model.
The fixed `scale` (default 5) is a choice: cosines lie in [−1, 1] and need a temperature; the paper's value is
unconfirmed.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import check_pairwise
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective

Tensor = torch.Tensor


@register_objective("pal_reward")
class PALReward(Objective):
    """variant: "a" (shared prototypes) or "b" (prompt-conditioned ideal points); num_prototypes K and dim D size
    the model's head (framework/model/pal.py); scale multiplies the distance or cosine reward."""

    feedback = "pairwise"
    needs_reference = False
    requires = ("rewards",)

    def __init__(self, variant: str = "a", num_prototypes: int = 2, dim: int = 16, scale: float = 5.0) -> None:
        super().__init__()
        if variant not in ("a", "b"):
            raise ValueError(f"pal_reward: variant must be 'a' or 'b', got {variant!r}")
        if num_prototypes < 1 or dim < 1 or scale <= 0:
            raise ValueError("pal_reward: num_prototypes and dim must be >= 1 and scale > 0")
        self.variant, self.num_prototypes, self.dim, self.scale = variant, int(num_prototypes), int(dim), float(scale)

    def pal_rewards(self, items: Tensor, ideal_points: Tensor) -> Tensor:
        """[B, K] rewards of K responses' item embeddings [B, K, D] for the row's user's ideal point [B, D]."""
        ideal = ideal_points.unsqueeze(1)
        if self.variant == "b":
            return self.scale * F.cosine_similarity(items, ideal.expand_as(items), dim=-1, eps=1e-8)
        return -self.scale * ((items - ideal).pow(2).sum(-1) + 1e-12).sqrt()  # eps: finite gradient at a_u

    def pal_loss(self, items: Tensor, ideal_points: Tensor) -> Tensor:
        """Per-pair losses [B] from item embeddings [B, 2, D] (chosen first) and ideal points [B, D]."""
        rewards = self.pal_rewards(items, ideal_points)
        return F.softplus(-(rewards[:, 0] - rewards[:, 1]))

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        check_pairwise(policy)
        if policy.rewards is None or policy.rewards.shape != policy.logps.shape:
            raise ValueError("pal_reward: SequenceStats.rewards must be [B, 2] per-user PAL rewards (pal_rewards)")
        chosen, rejected = policy.rewards[:, 0], policy.rewards[:, 1]
        gap = (chosen - rejected).detach()
        metrics = {"rewards/chosen": chosen.detach(), "rewards/rejected": rejected.detach(), "rewards/margin": gap,
                   "rewards/accuracy": (gap > 0).to(gap.dtype)}
        return ObjectiveOutput(F.softplus(-(chosen - rejected)), metrics)
