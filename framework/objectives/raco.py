"""RACO, reward-free alignment for conflicting objectives (arXiv 2602.02495; OBJECTIVES.md §5.3).

Per-objective pairwise losses L_i (DPO by default) from one forward; the update is d = Σ_i a_i·g_i with a from
the Gram matrix of the g_i: the conflict-averse point around the user-weighted g₀ = Σ w_i·g_i, with the solved
simplex point clipped to the user weights (`clip`, as in the authors' README commands) and no 1/(1+c²)
rescale. The trainer builds H and backpropagates Σ_i a_i·L_i with `a` detached (see `_gradients.py`).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from framework.objectives._multi import GradientCombinedObjective
from framework.objectives.base import register_objective


@register_objective("raco")
class RACO(GradientCombinedObjective):
    """weights: user weights w; c ∈ [0, 1): conflict-aversion radius; clip: p̃ = min(p*, w); component /
    component_args: the pairwise loss per objective (the authors use DPO, β = 0.2); gram: see the base class."""

    method = "raco"

    def __init__(self, weights: Optional[Sequence[float]] = None, c: float = 0.4, clip: bool = True,
                 component: str = "dpo", component_args: Optional[Mapping[str, Any]] = None, gram: str = "params") -> None:
        super().__init__(weights, component, component_args, gram)
        if not 0.0 <= float(c) < 1.0:
            raise ValueError(f"raco: c must be in [0, 1), got {c}")
        self.c, self.clip = float(c), bool(clip)

    def method_hparams(self) -> Dict[str, Any]:
        return {"c": self.c, "clip": self.clip}
