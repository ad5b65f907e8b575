"""BCO, Binary Classifier Optimization (Jung et al. 2024, arXiv 2404.04656).

Rewards r = β·ρ(y). A reward shift δ, the running mean of all rewards seen so far (both classes), makes the
loss a binary classifier of desirable versus undesirable completions:
    desirable:   −log σ(r − δ)          undesirable:   w(x)·(−log σ(−(r − δ)))
δ is objective state and needs the policy forward, so it is updated per micro-batch call: each training
call first folds this call's detached rewards of real (non-padding, batch["weights"] > 0) examples on all
ranks into δ, one all-reduce of [Σ w·r, Σ w] through `sync_sum`, then uses the updated δ (update-then-use,
as TRL's BCO did per call). δ is therefore the exact count-weighted mean of every real reward seen so far,
whatever the rank and micro-batch sizes; under gradient accumulation a micro-batch's δ includes the earlier
micro-batches of its step, not the later ones. `state_dict` carries δ and the count into checkpoints
(an old {"delta", "steps"} state loads with the step count as its weight, so δ adapts faster for a while);
evaluation (`train(False)`) reads δ without updating it.

UDM: optional batch["udm_weights"] [B] are the density-ratio weights w(x) of the undesirable examples
(ignored for desirable ones); fit them with `fit_udm_classifier` / `density_ratio_weights`. Without
them w = 1.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._binary import binary_labels, binary_metrics
from framework.objectives._common import check_positive, log_ratios
from framework.objectives._udm import UDMClassifier, density_ratio_weights, fit_udm_classifier
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective

__all__ = ["BCO", "UDMClassifier", "density_ratio_weights", "fit_udm_classifier"]


@register_objective("bco")
class BCO(Objective):
    """beta: inverse temperature of the reward r = β·ρ."""

    feedback = "binary"
    needs_reference = True

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        check_positive("bco", beta=beta)
        self.beta = float(beta)
        self._delta = 0.0
        self._count = 0.0  # Σ w of the rewards folded into δ

    @property
    def delta(self) -> float:
        """The current reward shift δ."""
        return self._delta

    def state_dict(self) -> Dict[str, Any]:
        return {"delta": self._delta, "count": self._count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._delta = float(state["delta"])
        self._count = float(state["count"] if "count" in state else state["steps"])

    def _update_delta(self, rewards: torch.Tensor, weights: torch.Tensor) -> None:
        sums = torch.stack([(weights * rewards.detach()).sum(), weights.sum()])
        total, count = (float(v) for v in self.sync_sum(sums))
        if count > 0 and math.isfinite(total):  # a NaN micro-batch (skipped by the trainer) must not poison δ
            self._count += count
            self._delta += (total - count * self._delta) / self._count

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels = binary_labels(policy, batch, "bco")
        rewards = self.beta * log_ratios(policy, reference)[:, 0]
        if self.training:
            self._update_delta(rewards, torch.as_tensor(batch.get("weights", torch.ones_like(rewards))).to(rewards))
        shifted = rewards - self._delta
        weights = batch.get("udm_weights")
        weights = torch.ones_like(rewards) if weights is None else torch.as_tensor(weights).to(rewards)
        if weights.shape != rewards.shape:
            raise ValueError(f"bco: udm_weights {tuple(weights.shape)} must be [B] = {tuple(rewards.shape)}")
        losses = torch.where(labels, F.softplus(-shifted), weights * F.softplus(shifted))
        metrics = binary_metrics(policy, rewards, labels)
        metrics["delta"] = torch.tensor(self._delta, dtype=rewards.dtype)
        metrics["udm_weights"] = torch.where(labels, torch.full_like(weights, float("nan")), weights).detach()
        return ObjectiveOutput(losses, metrics)
