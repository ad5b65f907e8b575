"""Helpers shared by objective modules (not an objective itself)."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from framework.objectives.base import SequenceStats

Tensor = torch.Tensor
NLL_REDUCTIONS = ("token", "sequence")


def log_ratios(policy: SequenceStats, reference: Optional[SequenceStats], mean: bool = False) -> Tensor:
    """ρ = ℓ_θ − ℓ_ref per response ([B, K]); with `mean`, per-token means ρ/|y|."""
    if reference is None:
        raise ValueError("this objective needs reference log-probs, got reference=None")
    if reference.logps.shape != policy.logps.shape:
        raise ValueError(f"policy and reference logps differ in shape: {tuple(policy.logps.shape)} vs {tuple(reference.logps.shape)}")
    if mean:
        return policy.mean_logps - reference.mean_logps
    return policy.logps - reference.logps


def implicit_rewards(policy: SequenceStats, reference: Optional[SequenceStats], beta: float) -> Tuple[Tensor, Tensor]:
    """DPO's implicit rewards β·ρ(y_w), β·ρ(y_l) ([B] each) of a pairwise batch; checks the [B, 2] layout."""
    check_pairwise(policy)
    rho = log_ratios(policy, reference)
    return beta * rho[:, 0], beta * rho[:, 1]


def pairwise_metrics(policy: SequenceStats, chosen_rewards: Tensor, rejected_rewards: Tensor) -> Dict[str, Tensor]:
    """The default pairwise metrics (OBJECTIVES.md §1b), all detached and per example ([B]).

    Mean token entropy needs token-level logits, which objectives never see; the trainer logs it.
    """
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


def require_key(batch: Mapping[str, Any], key: str, objective: str) -> Any:
    """`batch[key]`, or a clear error naming the objective that needs it."""
    if key not in batch:
        raise KeyError(f"{objective}: batch has no {key!r} (keys: {sorted(batch)})")
    return batch[key]


def check_positive(objective: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{objective}: {key} must be a finite number > 0, got {value!r}")


def check_nonnegative(objective: str, **values: float) -> None:
    for key, value in values.items():
        if not value >= 0 or not math.isfinite(value):
            raise ValueError(f"{objective}: {key} must be a finite number >= 0, got {value!r}")


def check_choice(objective: str, key: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{objective}: {key} must be one of {choices}, got {value!r}")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x ≤ 0, branch-stable (Mächler 2012): both branches keep full precision."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def token_window_stats(batch: Mapping[str, Any], column: int) -> Dict[str, Tensor]:
    """{"tokens": [Σ w·|y|, Σ w]} of response `column`: the statistic behind the token-mean normaliser."""
    weights = batch["weights"]
    lengths = torch.as_tensor(batch["lengths"])[:, column].to(weights)
    return {"tokens": torch.stack([(weights * lengths).sum(), weights.sum()])}


def nll_losses(stats: SequenceStats, column: int, reduction: str, mean_tokens: Optional[Tensor] = None) -> Tensor:
    """Per-example negative log-likelihood of response `column`, shaped so that the trainer's example mean
    gives the wanted reduction.

    * "sequence": −ℓ̄ (per-token mean per sequence, then the example mean): every example weighs the same.
    * "token": −ℓ / mean_tokens, with mean_tokens the mean response length over the real examples of the
      whole step (`token_window_stats` through `Objective.window_mean`). The trainer's global example mean
      then equals Σ(−ℓ)/Σ|y| over the step's real examples, the token mean of TRL's SFT/ORPO, however the
      examples are split over ranks and accumulation micro-batches.
    """
    if reduction == "sequence":
        return -stats.mean_logps[:, column]
    if mean_tokens is None:
        raise ValueError('nll_losses: reduction="token" needs mean_tokens')
    return -stats.logps[:, column] / mean_tokens.detach().to(stats.logps).clamp(min=1.0)
