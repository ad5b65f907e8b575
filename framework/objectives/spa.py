"""SPA's noise-aware loss (Kim et al., "Spread Preference Annotation", arXiv 2406.04412; OBJECTIVES.md §8.1;
the authors' `loss_type="distill"` in kingdy2002/SPA).

Pairs labelled by the policy itself are noisy. Each pair's confidence is the margin of an extrapolated model,
m_g = β·h_g; a pair is confident (c = 1) when m_g exceeds τ_K, the K-th percentile of the last `buffer_size`
margins seen in training. Low-confidence pairs are label-smoothed with α:
    L = (1 − α + αc)·softplus(−βh) + (α − αc)·softplus(βh),
and α = 0 for the first `alpha_warmup` share of the run's optimizer steps (the trainer reports the step through
`set_step`; called directly, without it, α applies from the start).

Choices the sources leave open (stated here, see OBJECTIVES.md §9.10):

* **Extrapolation on per-sequence log-probs, not logits.** The paper mixes token logits,
  z_g = (1+λ)·z_θ − λ·z_ref, and re-normalises them per token (log-softmax). Objectives only see summed
  log-probs, so here ℓ_g = (1+λ)·ℓ_θ − λ·ℓ_ref, the same mixture without the per-token normaliser
  log Σ_v π_θ^{1+λ} π_ref^{−λ}; hence h_g = (1+λ)·h. A token-level h_g would need a third forward over mixed
  logits in the trainer; on this form τ_K scales with m_g, so c does not depend on λ while λ is constant
  within a run (each SPA round is one run). λ still sets the logged margin `spa/extrapolated_margin`.
* **Buffer order across ranks.** The buffer holds the margins of real (non-padding) pairs of all ranks,
  gathered each micro-batch in rank order through `sync_gather`, so every rank holds the same buffer and a
  checkpoint (written from rank 0) restores it exactly. Update-then-use: a micro-batch's own margins are in
  the buffer its threshold is taken from. An empty buffer (first call of an evaluation) means c = 1 (DPO).
* **Percentile** = `torch.quantile` with linear interpolation (NumPy's default).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from framework.objectives._common import check_nonnegative, check_positive, implicit_rewards, pairwise_metrics
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, register_objective


@register_objective("spa")
class SPA(Objective):
    """beta: inverse temperature; alpha: label smoothing of low-confidence pairs; percentile: K (in %) of τ_K;
    buffer_size: margins kept for τ_K; alpha_warmup: share of optimizer steps with α = 0; extrapolation: λ."""

    feedback = "pairwise"
    needs_reference = True

    def __init__(self, beta: float = 0.1, alpha: float = 0.1, percentile: float = 10.0, buffer_size: int = 50,
                 alpha_warmup: float = 0.2, extrapolation: float = 0.5) -> None:
        super().__init__()
        check_positive("spa", beta=beta, buffer_size=buffer_size)
        check_nonnegative("spa", alpha=alpha, percentile=percentile, alpha_warmup=alpha_warmup, extrapolation=extrapolation)
        if alpha > 0.5 or percentile > 100 or alpha_warmup > 1:
            raise ValueError(f"spa: need alpha <= 0.5, percentile <= 100, alpha_warmup <= 1 "
                             f"(got {alpha}, {percentile}, {alpha_warmup})")
        self.beta, self.alpha, self.percentile = float(beta), float(alpha), float(percentile)
        self.buffer_size, self.alpha_warmup, self.extrapolation = int(buffer_size), float(alpha_warmup), float(extrapolation)
        self._margins: list = []
        self._step: Optional[int] = None
        self._total_steps: Optional[int] = None

    def set_step(self, step: int, total_steps: int) -> None:
        self._step, self._total_steps = int(step), int(total_steps)

    @property
    def current_alpha(self) -> float:
        """α of the current step: 0 during the warm-up share of the run."""
        if self._step is not None and self._step < self.alpha_warmup * self._total_steps:
            return 0.0
        return self.alpha

    @property
    def threshold(self) -> float:
        """τ_K over the buffer; −inf while it is empty (every pair confident)."""
        if not self._margins:
            return float("-inf")
        return float(torch.quantile(torch.tensor(self._margins, dtype=torch.float64), self.percentile / 100.0))

    def state_dict(self) -> Dict[str, Any]:
        return {"margins": list(self._margins)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._margins = [float(m) for m in state.get("margins", [])][-self.buffer_size:]

    def _update_buffer(self, margins: torch.Tensor, weights: torch.Tensor) -> None:
        gathered = self.sync_gather(torch.stack([margins.detach().double(), weights.detach().double()], -1).cpu())
        real = gathered[(gathered[:, 1] > 0) & torch.isfinite(gathered[:, 0]), 0]
        self._margins = (self._margins + real.tolist())[-self.buffer_size:]

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        chosen, rejected = implicit_rewards(policy, reference, self.beta)
        margin = chosen - rejected  # β·h
        extrapolated = (1.0 + self.extrapolation) * margin.detach()  # m_g = β·h_g, h_g = (1+λ)·h
        if self.training:
            self._update_buffer(extrapolated, torch.as_tensor(batch.get("weights", torch.ones_like(margin))))
        confident = (extrapolated > self.threshold).to(margin.dtype)
        alpha = self.current_alpha
        losses = (1 - alpha + alpha * confident) * F.softplus(-margin) + (alpha - alpha * confident) * F.softplus(margin)
        metrics = pairwise_metrics(policy, chosen, rejected)
        metrics.update({"spa/confident": confident.detach(), "spa/extrapolated_margin": extrapolated,
                        "spa/threshold": torch.tensor(self.threshold if self._margins else float("nan"), dtype=margin.dtype),
                        "spa/alpha": torch.tensor(alpha, dtype=margin.dtype)})
        return ObjectiveOutput(losses, metrics)
