"""Helpers for binary-feedback objectives (not an objective)."""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from framework.objectives._common import require_key
from framework.objectives.base import SequenceStats

Tensor = torch.Tensor


def binary_labels(policy: SequenceStats, batch: Mapping[str, Any], objective: str) -> Tensor:
    """batch["labels"] as a bool [B] tensor (True = desirable); checks K = 1."""
    if policy.logps.dim() != 2 or policy.logps.shape[1] != 1:
        raise ValueError(f"{objective}: binary feedback needs logps of shape [B, 1], got {tuple(policy.logps.shape)}")
    labels = torch.as_tensor(require_key(batch, "labels", objective), device=policy.logps.device)
    if labels.shape != policy.logps.shape[:1]:
        raise ValueError(f"{objective}: labels {tuple(labels.shape)} must be [B] = {tuple(policy.logps.shape[:1])}")
    return labels.bool()


def binary_metrics(policy: SequenceStats, rewards: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """Per-example metrics split by class: NaN marks the other class (the trainer reduces with a nanmean).

    `rewards/margin` is not per example: it is the difference of the two class means over the global batch,
    which the trainer can derive from the logged class means.
    """
    rewards = rewards.detach()
    logps = policy.logps[:, 0].detach()
    nan = torch.full_like(rewards, float("nan"))
    return {
        "rewards/chosen": torch.where(labels, rewards, nan),
        "rewards/rejected": torch.where(labels, nan, rewards),
        "logps/chosen": torch.where(labels, logps, nan),
        "logps/rejected": torch.where(labels, nan, logps),
    }
