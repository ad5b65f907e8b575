"""Gradient combination for multi-objective training, from the Gram matrix of per-objective gradients.

Weighted-sum, MGDA, PCGrad, CAGrad and RACO all return a direction d = Σ_i a_i·g_i whose coefficients a depend only
on H_ij = ⟨g_i, g_j⟩ and the user weights w (OBJECTIVES.md §1c, §5). The trainer builds H (shard-local dot products
summed across ranks), calls `gradient_coefficients`, and backpropagates Σ_i a_i·L_i with `a` detached, so the update
goes through the ordinary DeepSpeed backward and step. Everything here is float64 on the CPU and never touches
parameters.

Simplex subproblems are solved exactly by enumerating supports (active sets): on a support S the minimiser of
  RACO/CAGrad  Φ(p) = bᵀp + s·sqrt(pᵀHp)      or      MGDA  pᵀHp
is a stationary point of the equality-constrained problem, found in closed form (the m = 2 quadratic in λ of the
RACO authors for |S| = 2; a quadratic in the multiplier ν for |S| ≥ 3; a KKT linear solve for MGDA). The best
feasible candidate over all supports is the global minimum. That costs 2^m − 1 tiny solves: exact and instant for
the m ≤ 8 objectives people combine; beyond `EXACT_MAX_M` a projected (exponentiated) gradient solver is used.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor
METHODS = ("weighted_sum", "mgda", "pcgrad", "cagrad", "raco")
CAGRAD_RESCALES = ("none", "1/(1+c^2)", "1/(1+c)")
EXACT_MAX_M = 8
_EPS = 1e-12


@dataclasses.dataclass
class Combination:
    """The coefficients and what a run logs about how they were found."""

    coefficients: Tensor  # a [m]: the update is Σ a_i g_i
    simplex_point: Optional[Tensor] = None  # p* (RACO/CAGrad/MGDA)
    clipped_point: Optional[Tensor] = None  # p̃ = min(p*, w) (RACO with clip)
    case: str = ""  # which support or formula gave p* ("vertex 0", "edge 0-1", "interior", "no-conflict", ...)
    shift: float = 0.0  # s = c·‖g₀‖
    g0_norm: float = 0.0  # ‖Σ w_i g_i‖


def gradient_coefficients(method: str, gram: Tensor, weights: Optional[Tensor] = None, **hparams: float) -> Tensor:
    """Coefficients a [m] (float64) such that the combined update is Σ_i a_i·g_i.

    method: weighted_sum | mgda | pcgrad | cagrad | raco; gram: H [m, m]; weights: user weights w [m] (default
    uniform; normalised to the simplex). hparams: `c` (cagrad 0.5, raco 0.4), `clip` (raco, default True),
    `rescale` (cagrad: none | 1/(1+c^2) | 1/(1+c), default 1/(1+c^2)), `seed` (pcgrad's projection order)."""
    return combine(method, gram, weights, **hparams).coefficients


def combine(method: str, gram: Tensor, weights: Optional[Tensor] = None, **hparams: float) -> Combination:
    """`gradient_coefficients` with the solver's details for logging."""
    if method not in METHODS:
        raise ValueError(f"unknown gradient combination {method!r}; allowed: {', '.join(METHODS)}")
    gram = _check_gram(gram)
    w = _check_weights(weights, gram.shape[0])
    solver: Callable[..., Combination] = {"weighted_sum": _weighted_sum, "mgda": _mgda, "pcgrad": _pcgrad,
                                          "cagrad": _cagrad, "raco": _raco}[method]
    return solver(gram, w, **hparams)


def _check_gram(gram: Tensor) -> Tensor:
    gram = torch.as_tensor(gram).detach().to("cpu", torch.float64)
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram must be a square [m, m] matrix, got {tuple(gram.shape)}")
    if not torch.isfinite(gram).all():
        raise ValueError("gram has non-finite entries")
    return 0.5 * (gram + gram.T)  # symmetric up to the float noise of a distributed sum


def _check_weights(weights: Optional[Tensor], m: int) -> Tensor:
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != m:
        raise ValueError(f"weights has {w.numel()} entries for {m} objectives")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative, finite and not all zero, got {w.tolist()}")
    return w / w.sum()


# -- methods ---------------------------------------------------------------------------------------------
def _weighted_sum(gram: Tensor, w: Tensor, **hparams: float) -> Combination:
    _no_hparams("weighted_sum", hparams)
    return Combination(w.clone(), case="weighted-sum", g0_norm=_norm(gram, w))


def _mgda(gram: Tensor, w: Tensor, **hparams: float) -> Combination:
    """Min-norm point of the convex hull of the g_i (user weights do not enter: MGDA has none)."""
    _no_hparams("mgda", hparams)
    point, case = _simplex_min(gram, lambda sub: _mgda_support(gram, sub), lambda p: p @ gram @ p)
    return Combination(point.clone(), simplex_point=point, case=case, g0_norm=_norm(gram, w))


def _pcgrad(gram: Tensor, w: Tensor, seed: int = 0, **hparams: float) -> Combination:
    """PCGrad on the weighted gradients w_i·g_i (uniform w: the mean of the projected gradients): each one, in a
    seeded random order over the others, loses its component along any original gradient it conflicts with.
    Tracked as coefficient rows, g_i^PC = Σ_k C[i, k]·g_k, so only H is needed."""
    _no_hparams("pcgrad", hparams)
    m = gram.shape[0]
    scaled = w[:, None] * gram * w[None, :]  # Gram of the weighted gradients
    rows = torch.eye(m, dtype=torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    projected = 0
    for i in range(m):
        for j in torch.randperm(m, generator=generator).tolist():
            if j == i or scaled[j, j] <= _EPS:
                continue
            dot = float(rows[i] @ scaled[:, j])
            if dot < 0:
                rows[i, j] -= dot / float(scaled[j, j])
                projected += 1
    coefficients = rows.sum(0) * w
    return Combination(coefficients, case=f"{projected} projections" if projected else "no-conflict",
                       g0_norm=_norm(gram, w))


def _cagrad(gram: Tensor, w: Tensor, c: float = 0.5, rescale: str = "1/(1+c^2)", **hparams: float) -> Combination:
    """CAGrad (Liu et al. 2021) around g₀ = Σ w_i g_i: d = (g₀ + s·g_p/‖g_p‖)/rescale with s = c‖g₀‖ and
    p* = argmin_{p∈Δ} pᵀHw + s·sqrt(pᵀHp)."""
    _no_hparams("cagrad", hparams)
    if rescale not in CAGRAD_RESCALES:
        raise ValueError(f"cagrad: rescale={rescale!r}; allowed: {', '.join(CAGRAD_RESCALES)}")
    out = _conflict_averse(gram, w, c, clip=False)
    divisor = {"none": 1.0, "1/(1+c^2)": 1.0 + c * c, "1/(1+c)": 1.0 + c}[rescale]
    out.coefficients = out.coefficients / divisor
    return out


def _raco(gram: Tensor, w: Tensor, c: float = 0.4, clip: bool = True, **hparams: float) -> Combination:
    """RACO (arXiv 2602.02495, Algorithm 1 and the authors' code): CAGrad's subproblem around the user-weighted g₀,
    the solution clipped to the user weights p̃ = min(p*, w) when `clip`, and no 1/(1+c²) rescale."""
    _no_hparams("raco", hparams)
    return _conflict_averse(gram, w, c, clip=bool(clip))


def _conflict_averse(gram: Tensor, w: Tensor, c: float, clip: bool) -> Combination:
    if not 0.0 <= c < 1.0:
        raise ValueError(f"c must be in [0, 1), got {c}")
    g0_norm = _norm(gram, w)
    shift = c * g0_norm
    b = gram @ w
    if shift <= 0.0:  # c = 0 or g₀ = 0: plain weighted sum
        return Combination(w.clone(), case="weighted-sum", shift=0.0, g0_norm=g0_norm)
    objective = lambda p: b @ p + shift * (p @ gram @ p).clamp(min=_EPS).sqrt()  # noqa: E731
    point, case = _simplex_min(gram, lambda sub: _conflict_support(gram, b, shift, sub), objective)
    used = torch.minimum(point, w) if clip else point
    used_norm = _norm(gram, used)
    coefficients = w + (shift / used_norm) * used if used_norm > _EPS else w.clone()
    return Combination(coefficients, simplex_point=point, clipped_point=used if clip else None, case=case,
                       shift=shift, g0_norm=g0_norm)


# -- simplex solvers -------------------------------------------------------------------------------------
def _simplex_min(gram: Tensor, support_candidates: Callable[[Tuple[int, ...]], List[Tensor]],
                 objective: Callable[[Tensor], Tensor]) -> Tuple[Tensor, str]:
    """Best feasible candidate over every support (exact), or the iterative solver for large m."""
    m = gram.shape[0]
    if m > EXACT_MAX_M:
        return _exponentiated_gradient(objective, m), "iterative"
    best, best_value, best_case = None, math.inf, ""
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            for point in support_candidates(support):
                if point is None or (point < -1e-12).any():
                    continue
                point = point.clamp(min=0.0)
                point = point / point.sum()
                value = float(objective(point))
                # Prefer smaller supports on ties (a vertex over a degenerate edge point).
                if best is None or value < best_value - 1e-15 * max(1.0, abs(best_value)):
                    best, best_value, best_case = point, value, _case_name(support, m)
    assert best is not None  # vertices are always feasible
    return best, best_case


def _case_name(support: Tuple[int, ...], m: int) -> str:
    if len(support) == 1:
        return f"vertex {support[0]}"
    if len(support) == m:
        return "interior"
    return ("edge " if len(support) == 2 else "face ") + "-".join(map(str, support))


def _embed(values: Sequence[float], support: Tuple[int, ...], m: int) -> Tensor:
    point = torch.zeros(m, dtype=torch.float64)
    point[list(support)] = torch.as_tensor(list(values), dtype=torch.float64)
    return point


def _mgda_support(gram: Tensor, support: Tuple[int, ...]) -> List[Tensor]:
    """min pᵀHp with Σp = 1 on `support`: the KKT system [H 1; 1ᵀ 0][p; −ν] = [0; 1] (least squares if singular)."""
    m, k = gram.shape[0], len(support)
    if k == 1:
        return [_embed([1.0], support, m)]
    if k == 2:  # closed form: λ = ⟨g₂ − g₁, g₂⟩ / ‖g₁ − g₂‖²
        i, j = support
        denom = float(gram[i, i] + gram[j, j] - 2 * gram[i, j])
        if denom <= _EPS:
            return []
        lam = float(gram[j, j] - gram[i, j]) / denom
        return [_embed([lam, 1.0 - lam], support, m)]
    sub = gram[list(support)][:, list(support)]
    kkt = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    kkt[:k, :k], kkt[:k, k], kkt[k, :k] = sub, 1.0, 1.0
    rhs = torch.zeros(k + 1, dtype=torch.float64)
    rhs[k] = 1.0
    solution = torch.linalg.lstsq(kkt, rhs[:, None]).solution[:, 0]
    return [_embed(solution[:k].tolist(), support, m)]


def _conflict_support(gram: Tensor, b: Tensor, shift: float, support: Tuple[int, ...]) -> List[Tensor]:
    """Stationary points of Φ(p) = bᵀp + s·sqrt(pᵀHp) with Σp = 1 on `support`."""
    m, k = gram.shape[0], len(support)
    if k == 1:
        return [_embed([1.0], support, m)]
    if k == 2:
        i, j = support
        sub = gram[[i, j]][:, [i, j]]
        return [_embed([lam, 1.0 - lam], support, m) for lam in _raco_lambdas(sub, b[[i, j]], shift)]
    # b + (s/q)·Hp = ν·1 with q = sqrt(pᵀHp) gives p ∝ H⁻¹(ν1 − b) and s² = (ν1 − b)ᵀH⁻¹(ν1 − b).
    sub = gram[list(support)][:, list(support)]
    inverse = torch.linalg.pinv(sub)
    bs = b[list(support)]
    ones = torch.ones(k, dtype=torch.float64)
    qa, qb, qc = float(ones @ inverse @ ones), float(-2 * (ones @ inverse @ bs)), float(bs @ inverse @ bs) - shift**2
    points = []
    for nu in _real_roots(qa, qb, qc):
        direction = inverse @ (nu * ones - bs)
        total = float(direction.sum())
        if total > _EPS:  # q/s > 0
            points.append(_embed((direction / total).tolist(), support, m))
    return points


def _raco_lambdas(sub: Tensor, b: Tensor, shift: float) -> List[float]:
    """The RACO authors' m = 2 closed form: with p = (λ, 1 − λ), q₂ = H₁₁ + H₂₂ − 2H₁₂, q₁ = 2(H₁₂ − H₂₂),
    q₀ = H₂₂ and δ = b₁ − b₂, the stationary λ solve (δ²q₂ − s²q₂²)λ² + (δ²q₁ − s²q₁q₂)λ + (δ²q₀ − s²q₁²/4) = 0;
    the roots in [0, 1] are candidates (the endpoints come from the vertex supports)."""
    q2 = float(sub[0, 0] + sub[1, 1] - 2 * sub[0, 1])
    q1 = float(2 * (sub[0, 1] - sub[1, 1]))
    q0 = float(sub[1, 1])
    delta = float(b[0] - b[1])
    s2 = shift * shift
    roots = _real_roots(delta**2 * q2 - s2 * q2**2, delta**2 * q1 - s2 * q1 * q2, delta**2 * q0 - s2 * q1**2 / 4)
    return [lam for lam in roots if 0.0 <= lam <= 1.0]


def _real_roots(a: float, b: float, c: float) -> List[float]:
    scale = max(abs(a), abs(b), abs(c))
    if scale == 0.0:
        return []
    a, b, c = a / scale, b / scale, c / scale
    if abs(a) < 1e-14:
        return [] if abs(b) < 1e-14 else [-c / b]
    disc = b * b - 4 * a * c
    if disc < 0:
        if disc > -1e-12:
            disc = 0.0
        else:
            return []
    root = math.sqrt(disc)
    # Numerically stable pair of roots.
    q = -0.5 * (b + math.copysign(root, b))
    roots = [q / a] if q != 0 else [0.0]
    if q != 0:
        roots.append(c / q)
    return roots


def _exponentiated_gradient(objective: Callable[[Tensor], Tensor], m: int, steps: int = 5000) -> Tensor:
    """Mirror descent (multiplicative weights) on the simplex with step halving; only for m > EXACT_MAX_M."""
    point = torch.full((m,), 1.0 / m, dtype=torch.float64)
    step = 1.0
    for _ in range(steps):
        current = point.clone().requires_grad_(True)
        value = objective(current)
        (grad,) = torch.autograd.grad(value, current)
        candidate = point * torch.exp(-step * grad / max(float(grad.abs().max()), _EPS))
        candidate = candidate / candidate.sum()
        if float(objective(candidate)) <= float(value.detach()):
            point = candidate
        else:
            step *= 0.5
            if step < 1e-12:
                break
    return point


def _norm(gram: Tensor, p: Tensor) -> float:
    return math.sqrt(max(float(p @ gram @ p), 0.0))


def _no_hparams(method: str, hparams: dict) -> None:
    if hparams:
        raise ValueError(f"{method}: unknown hyperparameters {sorted(hparams)}")
