"""Weighted-sum (linear scalarisation) multi-objective baseline (OBJECTIVES.md §5.1).

For each objective i the pair is ordered by that objective's scores and a pairwise component loss L_i (DPO by
default; any registered pairwise objective via `component`) is computed from the one forward; the loss is
L = Σ_i w_i·L_i with w the user weights on the simplex (uniform by default), so the gradient is Σ_i w_i·g_i —
RACO with c = 0. Logs each objective's loss and accuracy (implicit-reward margin agreeing with its preference).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from framework.objectives._multi import (check_weights, component_losses, objective_names, objective_scores,
                                         per_objective_metrics, preference_signs, weight_vector)
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, build_objective, objective_class, register_objective


def build_component(owner: str, component: str, component_args: Optional[Mapping[str, Any]]) -> Objective:
    """The pairwise objective each per-objective loss uses (a reference-needing one, like the family itself)."""
    cls = objective_class(component)
    if cls.feedback != "pairwise" or cls.requires:
        raise ValueError(f"{owner}: component={component!r} must be a pairwise objective over log-probs (e.g. dpo, ipo, cdpo)")
    return build_objective(component, **dict(component_args or {}))


@register_objective("weighted_sum")
class WeightedSum(Objective):
    """weights: per-objective weights in the data's objective order (None = uniform); component: pairwise
    objective per objective (default dpo); component_args: its hyperparameters (default {"beta": 0.1})."""

    feedback = "multi"
    needs_reference = True

    def __init__(self, weights: Optional[Sequence[float]] = None, component: str = "dpo",
                 component_args: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        self.weights = check_weights("weighted_sum", weights)
        self.component = component
        self.component_args = dict(component_args or {})
        self._component = build_component("weighted_sum", component, self.component_args)
        self.needs_reference = self._component.needs_reference

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        scores = objective_scores(batch, policy, "weighted_sum")
        names = objective_names(batch, scores.shape[2])
        w = weight_vector("weighted_sum", self.weights, names, policy.logps)
        losses, margins = component_losses(self._component, policy, reference, batch, preference_signs(scores))
        metrics: Dict[str, torch.Tensor] = per_objective_metrics(names, losses, margins)
        return ObjectiveOutput((losses * w).sum(1), metrics)
