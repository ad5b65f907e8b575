"""PRO, the Preference Orchestrator (arXiv 2511.10656; OBJECTIVES.md §5.4): prompt-specific objective weights.

A light adapter f_ψ maps a prompt to weights on the simplex (framework/model/orchestrator.py). Its targets come from
the per-objective scores of the preferred response y⁺: w*(x) = softmax(z(x, y⁺)/T), z the per-objective z-score
over the training data, T = 0.1; it is trained with KL(w* ‖ f_ψ(x)). The policy loss here is the per-example
weighted sum Σ_i w_i(x)·L_i of the per-objective pairwise losses, with w(x) = the frozen adapter's weights,
precomputed per row into the store (batch["prompt_weights"] [B, M]). With weights in context the prompt also
carries those weights as a text line, so at deployment the adapter (or the user) picks the trade-off per prompt.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from framework.objectives._common import require_key
from framework.objectives._multi import (MultiObjective, MultiObjectiveOutput, component_losses, objective_names,
                                         objective_scores, per_objective_metrics, preference_signs)
from framework.objectives.base import SequenceStats, register_objective

Tensor = torch.Tensor


def orchestrator_targets(preferred_scores: Tensor, mean: Tensor, std: Tensor, temperature: float = 0.1) -> Tensor:
    """w*(x) [N, M] = softmax(((r(x, y⁺) − mean) / std) / T) from the preferred responses' scores [N, M] and the
    per-objective mean/std of the training data (the z-score keeps one objective's scale from dominating)."""
    if not temperature > 0:
        raise ValueError(f"pro: temperature must be > 0, got {temperature}")
    z = (preferred_scores - mean) / std.clamp_min(1e-12)
    return torch.softmax(z / temperature, dim=-1)


def preferred_index(objective_scores: Tensor, overall: Optional[Tensor], mean: Tensor, std: Tensor) -> Tensor:
    """y⁺ per row [N]: the response the overall label prefers (`overall` [N, K] scores, e.g. chosen 1 / rejected
    0), or, where a row has none (NaN), the response with the higher mean z-scored objective score."""
    z_mean = ((objective_scores - mean) / std.clamp_min(1e-12)).mean(-1)  # [N, K]
    by_objectives = z_mean.argmax(-1)
    if overall is None:
        return by_objectives
    has_label = ~torch.isnan(overall).any(-1) & (overall.max(-1).values > overall.min(-1).values)
    return torch.where(has_label, overall.nan_to_num(float("-inf")).argmax(-1), by_objectives)


def weight_entropy(weights: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of `weights` [B, M]; log M for uniform, 0 for one-hot."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(-1)


@register_objective("pro")
class PreferenceOrchestrator(MultiObjective):
    """adapter: a saved orchestrator directory (`alignray orchestrate train`), or null to train one on the
    training store first; temperature: T of the adapter targets; in_context: put the weights in the prompt
    (format in framework/model/orchestrator.py); adapter_epochs / adapter_lr / adapter_encoder: how a new adapter is
    trained (encoder null = a tiny encoder built offline); random_weights: with in_context, the share of training rows
    whose weights (in context and in the loss) are a uniform random point of the simplex instead of the adapter's, so the policy
    learns to read the weights line; component / component_args: the per-objective loss."""

    requires = ("prompt_weights",)

    def __init__(self, adapter: Optional[str] = None, temperature: float = 0.1, in_context: bool = True,
                 adapter_epochs: int = 3, adapter_lr: float = 1e-3, adapter_encoder: Optional[str] = None,
                 random_weights: float = 0.0, component: str = "dpo",
                 component_args: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(None, component, component_args)
        if not float(temperature) > 0:
            raise ValueError(f"pro: temperature must be > 0, got {temperature}")
        if int(adapter_epochs) < 1 or not float(adapter_lr) > 0:
            raise ValueError(f"pro: adapter_epochs must be >= 1 and adapter_lr > 0, got {adapter_epochs}, {adapter_lr}")
        if not 0.0 <= float(random_weights) <= 1.0:
            raise ValueError(f"pro: random_weights must be in [0, 1], got {random_weights}")
        self.adapter, self.temperature, self.in_context = adapter, float(temperature), bool(in_context)
        self.random_weights = float(random_weights)
        self.adapter_epochs, self.adapter_lr, self.adapter_encoder = int(adapter_epochs), float(adapter_lr), adapter_encoder
        if self.in_context:  # stored reference log-probs were computed without the weights line: live reference
            self.requires = ("prompt_weights", "context_prompts")

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> MultiObjectiveOutput:
        scores = objective_scores(batch, policy, self.name)
        names = objective_names(batch, scores.shape[2])
        w = torch.as_tensor(require_key(batch, "prompt_weights", self.name)).to(policy.logps)
        if w.shape != (scores.shape[0], scores.shape[2]):
            raise ValueError(f"pro: prompt_weights must be [B, M] = [{scores.shape[0]}, {scores.shape[2]}], got {tuple(w.shape)}")
        losses, margins = component_losses(self._component, policy, reference, batch, preference_signs(scores))
        metrics: Dict[str, Tensor] = per_objective_metrics(names, losses, margins)
        metrics["pro/weight_entropy"] = weight_entropy(w).detach()
        for i, name in enumerate(names):
            metrics[f"pro/weight/{name}"] = w[:, i].detach()
        return MultiObjectiveOutput((losses * w).sum(1), metrics, components=losses, weights=w.mean(0).detach())
