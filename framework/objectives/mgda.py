"""MGDA, multiple-gradient descent (Désidéri 2012; Sener & Koltun 2018; OBJECTIVES.md §5.5) over per-objective
pairwise losses: d is the min-norm point of the convex hull of the g_i. It has no user weights; `weights` only
sets the weighted-sum `loss` that is logged."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from framework.objectives._multi import GradientCombinedObjective
from framework.objectives.base import register_objective


@register_objective("mgda")
class MGDA(GradientCombinedObjective):
    """weights: only for the logged weighted-sum loss; component / component_args: pairwise loss per objective."""

    method = "mgda"

    def __init__(self, weights: Optional[Sequence[float]] = None, component: str = "dpo",
                 component_args: Optional[Mapping[str, Any]] = None, gram: str = "params") -> None:
        super().__init__(weights, component, component_args, gram)
