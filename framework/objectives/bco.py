"""BCO, Binary Classifier Optimization (Jung et al. 2024, arXiv 2404.04656).

Rewards r = β·ρ(y). A reward shift δ, the running mean of all rewards seen so far (both classes), makes the
loss a binary classifier of desirable versus undesirable completions:
    desirable:   −log σ(r − δ)          undesirable:   w(x)·(−log σ(−(r − δ)))
δ is objective state: each training call first folds in the detached batch-mean reward, averaged across
ranks with `sync_mean`, then uses the updated δ (update-then-use, as TRL's BCO did). With equal global
batches per step the step-wise running mean δ_t = δ_{t−1} + (m_t − δ_{t−1})/t equals the mean over all
rewards. `state_dict` carries δ and the step count into checkpoints; evaluation (`train(False)`) reads δ
without updating it.

UDM: optional batch["udm_weights"] [B] are the density-ratio weights w(x) of the undesirable examples
(ignored for desirable ones); fit them with `fit_udm_classifier` / `density_ratio_weights`. Without
them w = 1.
"""

from __future__ import annotations

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
        self._steps = 0

    @property
    def delta(self) -> float:
        """The current reward shift δ."""
        return self._delta

    def state_dict(self) -> Dict[str, Any]:
        return {"delta": self._delta, "steps": self._steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._delta = float(state["delta"])
        self._steps = int(state["steps"])

    def _update_delta(self, rewards: torch.Tensor) -> None:
        batch_mean = float(self.sync_mean(rewards.detach().mean()))
        self._steps += 1
        self._delta += (batch_mean - self._delta) / self._steps

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels = binary_labels(policy, batch, "bco")
        rewards = self.beta * log_ratios(policy, reference)[:, 0]
        if self.training:
            self._update_delta(rewards)
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
