"""PCGrad, gradient surgery (Yu et al. 2020, arXiv 2001.06782; OBJECTIVES.md §5.5) over per-objective pairwise
losses: each weighted gradient w_i·g_i drops its component along every other original gradient it conflicts
with, in a random order drawn from `seed` and the step; d is their sum."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from framework.objectives._multi import GradientCombinedObjective
from framework.objectives.base import register_objective


@register_objective("pcgrad")
class PCGrad(GradientCombinedObjective):
    """weights: w scaling each objective's gradient (None = uniform); seed: base of the projection order."""

    method = "pcgrad"

    def __init__(self, weights: Optional[Sequence[float]] = None, seed: int = 0, component: str = "dpo",
                 component_args: Optional[Mapping[str, Any]] = None, gram: str = "params") -> None:
        super().__init__(weights, component, component_args, gram)
        self.seed = int(seed)
        self._calls = 0

    def method_hparams(self) -> Dict[str, Any]:
        # A new order each step, reproducible from the seed; the call count is checkpointed.
        self._calls += 1
        return {"seed": self.seed * 1_000_003 + self._calls}

    def state_dict(self) -> Dict[str, Any]:
        return {"calls": self._calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._calls = int(state.get("calls", 0))
