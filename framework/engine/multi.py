"""Multi-objective updates from the Gram matrix of per-objective gradients (one micro-batch at a time).

A `GradientCombinedObjective` (raco, cagrad, mgda, pcgrad) returns per-example, per-objective losses L [B, M].
The global per-objective losses L_i = Σ_b w_b·L_bi / N (N = real examples of the whole step, all ranks) have
gradients g_i; their Gram matrix H_ij = ⟨g_i, g_j⟩ gives coefficients a (`objective.coefficients`), and the
step backpropagates Σ_i a_i·L_i with `a` detached through the ordinary DeepSpeed backward.

Gram modes:
* "logps": g_i taken with respect to the per-sequence log-probs of the global batch. Examples are disjoint
  across ranks, so summing each rank's m×m product in one all-reduce gives this H exactly. No extra backward
  through the model; an approximation of the parameter-space Gram (it ignores how shared parameters couple
  sequences).
With gradient accumulation the coefficients are solved per micro-batch, as in the RACO authors' code (each
micro-batch's H covers that micro-batch on all ranks).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch

Tensor = torch.Tensor


def combined_loss(seam: Any, objective: Any, out: Any, policy_logps: Tensor, weights: Tensor, scale: float,
                  names: List[str]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The scalar to backpropagate (Σ_i a_i·L_i, scaled like the single-objective loss) and the combination's
    metrics. Every rank must call this for every micro-batch (one all-reduce of an m×m matrix)."""
    per_objective = (out.components * weights[:, None]).sum(0) * scale  # [M], this rank's share of L_i
    m = per_objective.shape[0]
    grads = [torch.autograd.grad(per_objective[i], policy_logps, retain_graph=True, allow_unused=True)[0]
             for i in range(m)]
    flat = torch.stack([(g if g is not None else torch.zeros_like(policy_logps)).flatten() for g in grads]).double()
    # DeepSpeed averages the backpropagated gradient over ranks: divide by world size so H is of the true g_i.
    gram = seam.all_reduce_sum((flat @ flat.T).cpu()) / seam.world_size**2
    if torch.isfinite(gram).all():
        combination = objective.coefficients(gram, out.weights.double().cpu())
        coefficients = combination.coefficients
        support = float((combination.simplex_point > 0).sum()) if combination.simplex_point is not None else float(m)
    else:  # the step will be skipped as non-finite; keep the collectives aligned
        coefficients, support = out.weights.double().cpu(), float("nan")
    loss = (per_objective * coefficients.to(per_objective)).sum()
    return loss, _metrics(gram, coefficients, support, names)


def _metrics(gram: Tensor, coefficients: Tensor, support: float, names: List[str]) -> Dict[str, Tensor]:
    norms = gram.diagonal().clamp(min=0).sqrt()
    metrics = {"mo/support_size": torch.tensor(support, dtype=torch.float64)}
    for i, name in enumerate(names):
        metrics[f"mo/coef/{name}"] = coefficients[i].clone()
        metrics[f"mo/grad_norm/{name}"] = norms[i].clone()
        for j in range(i + 1, len(names)):
            denom = float(norms[i] * norms[j])
            cos = float(gram[i, j]) / denom if denom > 0 else math.nan
            metrics[f"mo/cos/{name}-{names[j]}"] = torch.tensor(cos, dtype=torch.float64)
    return metrics
