"""Helpers for multi-objective objectives (not an objective itself).

A multi-objective row holds K = 2 responses and a score per response and objective, batch["objective_scores"]
[B, 2, M] (higher is better; `store build --kind multi`), with the objective names in batch["objective_names"].
Objective i prefers the response it scores higher: its sign s_i = +1 when column 0 wins, −1 when column 1
wins, 0 on a tie (no preference: that component's loss is 0 for the example). Component i is a pairwise loss
on the pair ordered by objective i; one policy and reference forward serves every component.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from framework.objectives._common import check_pairwise, require_key
from framework.objectives.base import Objective, ObjectiveOutput, SequenceStats, build_objective, objective_class

Tensor = torch.Tensor


def objective_scores(batch: Mapping[str, Any], policy: SequenceStats, objective: str) -> Tensor:
    """batch["objective_scores"] as [B, 2, M] on the policy's device and dtype; checks the layout."""
    check_pairwise(policy)
    scores = torch.as_tensor(require_key(batch, "objective_scores", objective)).to(policy.logps)
    if scores.dim() != 3 or scores.shape[:2] != policy.logps.shape or scores.shape[2] < 1:
        raise ValueError(f"{objective}: objective_scores must be [B, 2, M] = [{policy.logps.shape[0]}, 2, M], "
                         f"got {tuple(scores.shape)}")
    return scores


def objective_names(batch: Mapping[str, Any], m: int) -> List[str]:
    names = batch.get("objective_names")
    return list(names) if names is not None else [f"objective_{i}" for i in range(m)]


def preference_signs(scores: Tensor) -> Tensor:
    """s [B, M]: +1 where objective i prefers column 0, −1 where it prefers column 1, 0 on ties."""
    return torch.sign(scores[:, 0, :] - scores[:, 1, :])


def check_weights(objective: str, weights: Optional[Sequence[float]]) -> Optional[Tuple[float, ...]]:
    """User weights as a tuple (validated, not yet normalised), or None for uniform."""
    if weights is None:
        return None
    values = tuple(float(w) for w in weights)
    if not values or any(not w >= 0 or w == float("inf") for w in values) or sum(values) <= 0:
        raise ValueError(f"{objective}: weights must be non-negative, finite and not all zero, got {list(weights)}")
    return values


def weight_vector(objective: str, weights: Optional[Tuple[float, ...]], names: Sequence[str], like: Tensor) -> Tensor:
    """w [M] on the simplex, uniform when none were given; the count must match the data's objectives."""
    m = len(names)
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device)
    if len(weights) != m:
        raise ValueError(f"{objective}: {len(weights)} weights for {m} objectives in the data ({', '.join(names)})")
    w = torch.tensor(weights, dtype=like.dtype, device=like.device)
    return w / w.sum()


def ordered_by(stats: Optional[SequenceStats], signs: Tensor) -> Optional[SequenceStats]:
    """`stats` with columns swapped where `signs` < 0, so column 0 is the response the objective prefers."""
    if stats is None:
        return None
    swap = (signs < 0).unsqueeze(1)

    def order(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else torch.where(swap, t.flip(1), t)

    return SequenceStats(*(order(getattr(stats, f)) for f in stats.__dataclass_fields__))


def component_losses(component: Objective, policy: SequenceStats, reference: Optional[SequenceStats],
                     batch: Mapping[str, Any], signs: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-objective losses L [B, M] of the pairwise `component` on each objective's ordering, and the
    implicit-reward margins [B, M] (chosen − rejected under that ordering) for per-objective accuracy."""
    losses, margins = [], []
    for i in range(signs.shape[1]):
        out = component.loss(ordered_by(policy, signs[:, i]), ordered_by(reference, signs[:, i]), batch)
        tie = signs[:, i] == 0
        losses.append(torch.where(tie, torch.zeros_like(out.losses), out.losses))
        margin = out.metrics.get("rewards/margin")
        margins.append(torch.full_like(out.losses, float("nan")) if margin is None
                       else torch.where(tie, torch.full_like(margin, float("nan")), margin))
    return torch.stack(losses, 1), torch.stack(margins, 1).detach()


def per_objective_metrics(names: Sequence[str], losses: Tensor, margins: Tensor) -> dict:
    """`<name>/loss` and `<name>/accuracy` per objective (NaN where that objective has no preference)."""
    metrics = {}
    for i, name in enumerate(names):
        metrics[f"{name}/loss"] = losses[:, i].detach()
        margin = margins[:, i]
        metrics[f"{name}/accuracy"] = torch.where(torch.isnan(margin), margin, (margin > 0).to(margin.dtype))
    return metrics


def build_component(owner: str, component: str, component_args: Optional[Mapping[str, Any]]) -> Objective:
    """The pairwise objective each per-objective loss uses."""
    cls = objective_class(component)
    if cls.feedback != "pairwise" or cls.requires:
        raise ValueError(f"{owner}: component={component!r} must be a pairwise objective over log-probs (e.g. dpo, ipo, cdpo)")
    return build_objective(component, **dict(component_args or {}))


@dataclasses.dataclass
class MultiObjectiveOutput(ObjectiveOutput):
    """`losses` = Σ_i w_i·L_i [B] (the weighted sum, also what is logged as `loss`); `components` = L [B, M] with
    gradient, for trainers that choose the coefficients from the Gram matrix of the per-objective gradients."""

    components: Optional[Tensor] = None
    weights: Optional[Tensor] = None  # w [M] on the simplex


class MultiObjective(Objective):
    """Per-objective pairwise losses from one forward: each objective orders the pair by its own scores."""

    feedback = "multi"
    needs_reference = True

    def __init__(self, weights: Optional[Sequence[float]], component: str, component_args: Optional[Mapping[str, Any]]) -> None:
        super().__init__()
        self.weights = check_weights(self.name, weights)
        self.component = component
        self.component_args = dict(component_args or {})
        self._component = build_component(self.name, component, self.component_args)
        self.needs_reference = self._component.needs_reference

    def window_stats(self, batch: Mapping[str, Any]) -> Dict[str, Tensor]:
        """The component's step-wide statistics (e.g. ORPO's token-mean normaliser), shared by every objective."""
        return self._component.window_stats(batch)

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> MultiObjectiveOutput:
        scores = objective_scores(batch, policy, self.name)
        names = objective_names(batch, scores.shape[2])
        w = weight_vector(self.name, self.weights, names, policy.logps)
        losses, margins = component_losses(self._component, policy, reference, batch, preference_signs(scores))
        metrics: Dict[str, Tensor] = per_objective_metrics(names, losses, margins)
        return MultiObjectiveOutput((losses * w).sum(1), metrics, components=losses, weights=w.detach())


class GradientCombinedObjective(MultiObjective):
    """A multi-objective loss whose update direction Σ_i a_i·g_i is chosen from the Gram matrix H of the
    per-objective gradients by `gradient_coefficients(method, H, w, **hparams)` (see `_gradients.py`).

    `gram` says which gradients H is built from: "params" (exact) over the model parameters, one extra backward
    per objective (framework/engine/multi.py); "logps" (cheap, approximate) with respect to the per-sequence
    log-probs of the global batch, H_ij = Σ_b ⟨∂L_i/∂ℓ_b, ∂L_j/∂ℓ_b⟩ — no extra backward through the model, but it
    ignores how parameters couple different sequences."""

    method: str = ""
    GRAM_MODES = ("params", "logps")

    def __init__(self, weights: Optional[Sequence[float]], component: str, component_args: Optional[Mapping[str, Any]],
                 gram: str) -> None:
        super().__init__(weights, component, component_args)
        if gram not in self.GRAM_MODES:
            raise ValueError(f"{self.name}: gram={gram!r}; allowed: {', '.join(self.GRAM_MODES)}")
        self.gram = gram

    def method_hparams(self) -> Dict[str, Any]:
        """Hyperparameters passed to `gradient_coefficients` besides H and w."""
        return {}
