"""Multi-objective updates from the Gram matrix of per-objective gradients (one micro-batch at a time).

A `GradientCombinedObjective` (raco, cagrad, mgda, pcgrad) returns per-example, per-objective losses L [B, M].
The global per-objective losses L_i = Σ_b w_b·L_bi / N (N = real examples of the whole step, all ranks) have
gradients g_i; their Gram matrix H_ij = ⟨g_i, g_j⟩ gives coefficients a (`objective.coefficients`), and the
step backpropagates Σ_i a_i·L_i with `a` detached through the ordinary DeepSpeed backward.

Gram modes:
* "params" (exact): g_i over the model parameters, as DeepSpeed reduces them: one engine backward per objective
  on the retained graph, each rank's dot products over its own ZeRO partition, one all-reduce
  (`DeepSpeedSeam.gradient_gram`). m extra backwards per step; grad_accum=1 only. Logs `mo/logps_coef_error`,
  how far the cheap mode's coefficients would be on the same step.
* "logps" (cheap): g_i taken with respect to the per-sequence log-probs of the global batch. Examples are disjoint
  across ranks, so summing each rank's m×m product in one all-reduce gives this H exactly. No extra backward
  through the model; an approximation of the parameter-space Gram (it ignores how shared parameters couple
  sequences). With gradient accumulation the coefficients are solved per micro-batch, as in the RACO authors'
  code (each micro-batch's H covers that micro-batch on all ranks).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch

from framework.objectives import Combination, combine

Tensor = torch.Tensor


def combined_loss(seam: Any, objective: Any, out: Any, policy_logps: Tensor, weights: Tensor, scale: float,
                  names: List[str]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The scalar to backpropagate (Σ_i a_i·L_i, scaled like the single-objective loss) and the combination's
    metrics. Every rank must call this for every micro-batch (collectives: all-reduces, and backwards for
    gram="params")."""
    per_objective = (out.components * weights[:, None]).sum(0) * scale  # [M], this rank's share of L_i
    user_weights = out.weights.double().cpu()
    hparams = objective.method_hparams()  # once per step: PCGrad draws its projection order here
    logps_gram = _logps_gram(seam, per_objective, policy_logps)
    gram = seam.gradient_gram(list(per_objective)) if objective.gram == "params" else logps_gram
    combination = combine(objective.method, gram, user_weights, **hparams)
    metrics = _metrics(gram, combination, names)
    if objective.gram == "params":
        cheap = combine(objective.method, logps_gram, user_weights, **hparams).coefficients
        metrics["mo/logps_coef_error"] = (cheap - combination.coefficients).abs().max()
    loss = (per_objective * combination.coefficients.to(per_objective)).sum()
    return loss, metrics


def _logps_gram(seam: Any, per_objective: Tensor, policy_logps: Tensor) -> Tensor:
    """H over the per-sequence log-probs: this rank's products, summed over ranks (their examples are disjoint).
    DeepSpeed averages the backpropagated gradient over ranks, hence the division by world size squared."""
    grads = [torch.autograd.grad(loss, policy_logps, retain_graph=True, allow_unused=True)[0] for loss in per_objective]
    flat = torch.stack([(g if g is not None else torch.zeros_like(policy_logps)).flatten() for g in grads]).double()
    return seam.all_reduce_sum((flat @ flat.T).cpu()) / seam.world_size**2


def _metrics(gram: Tensor, combination: Combination, names: List[str]) -> Dict[str, Tensor]:
    """Coefficients, gradient norms and cosines, and how many objectives the solved simplex point uses."""
    norms = gram.diagonal().clamp(min=0).sqrt()
    point = combination.simplex_point
    support = float((point > 0).sum()) if point is not None else float(len(names))
    metrics = {"mo/support_size": torch.tensor(support, dtype=torch.float64)}
    for i, name in enumerate(names):
        metrics[f"mo/coef/{name}"] = combination.coefficients[i].clone()
        metrics[f"mo/grad_norm/{name}"] = norms[i].clone()
        for j in range(i + 1, len(names)):
            denom = float(norms[i] * norms[j])
            cos = float(gram[i, j]) / denom if denom > 0 else math.nan
            metrics[f"mo/cos/{name}-{names[j]}"] = torch.tensor(cos, dtype=torch.float64)
    return metrics
