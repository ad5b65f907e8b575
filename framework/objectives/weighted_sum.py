"""Weighted-sum (linear scalarisation) multi-objective baseline (OBJECTIVES.md §5.1).

For each objective i the pair is ordered by that objective's scores and a pairwise component loss L_i (DPO by
default; any registered pairwise objective via `component`) is computed from the one forward; the loss is
L = Σ_i w_i·L_i with w the user weights on the simplex (uniform by default), so the gradient is Σ_i w_i·g_i —
RACO with c = 0. Logs each objective's loss and accuracy (implicit-reward margin agreeing with its preference).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from framework.objectives._multi import MultiObjective
from framework.objectives.base import register_objective


@register_objective("weighted_sum")
class WeightedSum(MultiObjective):
    """weights: per-objective weights in the data's objective order (None = uniform); component: pairwise
    objective per objective (default dpo); component_args: its hyperparameters (default {"beta": 0.1})."""

    def __init__(self, weights: Optional[Sequence[float]] = None, component: str = "dpo",
                 component_args: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(weights, component, component_args)
