"""CAGrad, conflict-averse gradient descent (Liu et al. 2021, arXiv 2110.14048; OBJECTIVES.md §5.5) over
per-objective pairwise losses: d = (g₀ + c‖g₀‖·g_p/‖g_p‖)/rescale around g₀ = Σ w_i·g_i (uniform w: the mean)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from framework.objectives._gradients import CAGRAD_RESCALES
from framework.objectives._multi import GradientCombinedObjective
from framework.objectives.base import register_objective


@register_objective("cagrad")
class CAGrad(GradientCombinedObjective):
    """weights: w (None = uniform, the original); c ∈ [0, 1) (official code 0.5); rescale: none | 1/(1+c^2) | 1/(1+c)."""

    method = "cagrad"

    def __init__(self, weights: Optional[Sequence[float]] = None, c: float = 0.5, rescale: str = "1/(1+c^2)",
                 component: str = "dpo", component_args: Optional[Mapping[str, Any]] = None, gram: str = "params") -> None:
        super().__init__(weights, component, component_args, gram)
        if not 0.0 <= float(c) < 1.0:
            raise ValueError(f"cagrad: c must be in [0, 1), got {c}")
        if rescale not in CAGRAD_RESCALES:
            raise ValueError(f"cagrad: rescale={rescale!r}; allowed: {', '.join(CAGRAD_RESCALES)}")
        self.c, self.rescale = float(c), rescale

    def method_hparams(self) -> Dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale}
