"""Gradient-combination coefficients (OBJECTIVES.md §5.1, §5.3, §5.5) against explicit vector computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from framework.objectives import combine, gradient_coefficients

D = torch.float64


def _grads(m: int, dim: int = 7, seed: int = 0, conflict: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, dim, generator=gen, dtype=D)
    if conflict:  # make objective 1 pull against objective 0
        g[1] = -0.6 * g[0] + 0.5 * g[1]
    return g


def _direction(method, g, w=None, **hp):
    a = gradient_coefficients(method, g @ g.T, w, **hp)
    return a @ g, a


def _phi(p, b, s, H):
    return float(b @ p) + s * math.sqrt(max(float(p @ H @ p), 0.0))


def _grid_simplex_min(fn, m: int, n: int):
    """Brute-force minimum over a regular grid of the simplex."""
    best, arg = math.inf, None
    for idx in itertools.product(range(n + 1), repeat=m - 1):
        if sum(idx) > n:
            continue
        p = torch.tensor([*idx, n - sum(idx)], dtype=D) / n
        value = fn(p)
        if value < best:
            best, arg = value, p
    return best, arg


def test_weighted_sum_is_the_weights():
    g = _grads(3)
    d, a = _direction("weighted_sum", g, torch.tensor([0.5, 0.3, 0.2], dtype=D))
    assert torch.allclose(a, torch.tensor([0.5, 0.3, 0.2], dtype=D))
    assert torch.allclose(d, 0.5 * g[0] + 0.3 * g[1] + 0.2 * g[2])


def test_weights_are_normalised_and_validated():
    H = torch.eye(2, dtype=D)
    assert torch.allclose(gradient_coefficients("weighted_sum", H, torch.tensor([2.0, 2.0])), torch.tensor([0.5, 0.5], dtype=D))
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError):
            gradient_coefficients("weighted_sum", H, torch.tensor(bad))
    with pytest.raises(ValueError, match="allowed"):
        gradient_coefficients("nope", H)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        gradient_coefficients("mgda", H, c=0.3)


# -- RACO ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 3])
def test_raco_c0_is_weighted_sum(m):
    g = _grads(m, conflict=True)
    w = torch.rand(m, dtype=D, generator=torch.Generator().manual_seed(3)) + 0.1
    d, _ = _direction("raco", g, w, c=0.0)
    assert torch.allclose(d, (w / w.sum()) @ g)


@pytest.mark.parametrize("clip", [True, False])
def test_raco_identical_gradients_scale_by_one_plus_c(clip):
    g = _grads(1).repeat(3, 1)
    w = torch.tensor([0.6, 0.3, 0.1], dtype=D)
    d, _ = _direction("raco", g, w, c=0.4, clip=clip)
    assert torch.allclose(d, 1.4 * g[0], atol=1e-10)


@pytest.mark.parametrize("k", [0, 1])
def test_raco_one_hot_weight_is_parallel_to_that_gradient(k):
    g = _grads(2, conflict=True)
    w = torch.zeros(2, dtype=D)
    w[k] = 1.0
    d, _ = _direction("raco", g, w, c=0.4, clip=True)
    cos = float(d @ g[k] / (d.norm() * g[k].norm()))
    assert cos == pytest.approx(1.0, abs=1e-10) and d.norm() > 0


@pytest.mark.parametrize("seed", range(6))
def test_raco_m2_closed_form_matches_grid_search(seed):
    g = _grads(2, dim=5, seed=seed, conflict=seed % 2 == 0)
    H = g @ g.T
    w = torch.tensor([0.8, 0.2], dtype=D)
    out = combine("raco", H, w, c=0.4, clip=False)
    b, s = H @ w, out.shift
    lam = np.linspace(0.0, 1.0, 200_001)
    values = [(_phi(torch.tensor([x, 1 - x], dtype=D), b, s, H)) for x in lam[::50]]  # coarse, then refine
    x0 = lam[::50][int(np.argmin(values))]
    fine = np.clip(np.linspace(x0 - 3e-4, x0 + 3e-4, 2001), 0, 1)
    best = min(_phi(torch.tensor([x, 1 - x], dtype=D), b, s, H) for x in fine)
    assert _phi(out.simplex_point, b, s, H) <= best + 1e-10


@pytest.mark.parametrize("seed", range(4))
def test_raco_m3_active_set_matches_grid_search(seed):
    g = _grads(3, dim=6, seed=seed, conflict=True)
    H = g @ g.T
    w = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    out = combine("raco", H, w, c=0.4, clip=False)
    b, s = H @ w, out.shift
    best, _ = _grid_simplex_min(lambda p: _phi(p, b, s, H), 3, 300)
    found = _phi(out.simplex_point, b, s, H)
    assert found <= best + 1e-12 and abs(float(out.simplex_point.sum()) - 1) < 1e-12


@pytest.mark.parametrize("clip", [True, False])
def test_raco_coefficients_equal_the_explicit_vector_algorithm(clip):
    g = _grads(3, seed=5, conflict=True)
    w = torch.tensor([0.7, 0.2, 0.1], dtype=D)
    out = combine("raco", g @ g.T, w, c=0.4, clip=clip)
    # Algorithm 1 with vectors, using the solved p*: g0, s, clip, G̃, G0 = g0 + s·G̃/‖G̃‖.
    g0 = w @ g
    s = 0.4 * g0.norm()
    p = torch.minimum(out.simplex_point, w) if clip else out.simplex_point
    G = p @ g
    expected = g0 + s * G / G.norm()
    assert torch.allclose(out.coefficients @ g, expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_raco_improves_the_worst_objective_on_conflicts(seed):
    g = _grads(2, dim=4, seed=seed, conflict=True)
    w = torch.tensor([0.8, 0.2], dtype=D)
    d, _ = _direction("raco", g, w, c=0.4, clip=True)
    g0 = w @ g
    assert min(float(gi @ d) for gi in g) >= min(float(gi @ g0) for gi in g) - 1e-12


def test_raco_rejects_c_outside_unit_interval():
    with pytest.raises(ValueError, match="c must be"):
        gradient_coefficients("raco", torch.eye(2, dtype=D), c=1.0)


# -- CAGrad ----------------------------------------------------------------------------------------------
def test_cagrad_c0_is_mean_gradient():
    g = _grads(3, conflict=True)
    d, _ = _direction("cagrad", g, c=0.0)
    assert torch.allclose(d, g.mean(0))


def test_unclipped_raco_with_uniform_weights_is_cagrad_without_rescale():
    g = _grads(3, seed=2, conflict=True)
    raco, _ = _direction("raco", g, None, c=0.4, clip=False)
    cagrad, _ = _direction("cagrad", g, None, c=0.4, rescale="none")
    assert torch.allclose(raco, cagrad, atol=1e-12)
    rescaled, _ = _direction("cagrad", g, None, c=0.4)
    assert torch.allclose(rescaled, cagrad / 1.16, atol=1e-12)


# -- PCGrad ----------------------------------------------------------------------------------------------
def _pcgrad_vectors(g, order_seed=0):
    """PCGrad with vectors, in the same seeded order as the implementation."""
    m = g.shape[0]
    gen = torch.Generator().manual_seed(order_seed)
    out = []
    for i in range(m):
        gi = g[i].clone()
        for j in torch.randperm(m, generator=gen).tolist():
            if j != i and gi @ g[j] < 0:
                gi = gi - (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return torch.stack(out).sum(0)


def test_pcgrad_without_conflict_sums_the_gradients():
    g = _grads(1).abs().repeat(3, 1) * torch.tensor([[1.0], [2.0], [0.5]], dtype=D)
    d, _ = _direction("pcgrad", g, torch.ones(3, dtype=D))
    assert torch.allclose(d, g.sum(0) / 3)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_equals_vector_pcgrad_and_removes_conflict(seed):
    g = _grads(3, seed=seed, conflict=True)
    d, _ = _direction("pcgrad", g, torch.ones(3, dtype=D), seed=seed)
    assert torch.allclose(d, _pcgrad_vectors(g / 3, seed), atol=1e-12)
    g2 = g[:2]
    d2, _ = _direction("pcgrad", g2, None)
    assert all(float(d2 @ gi) >= -1e-12 for gi in g2)


# -- MGDA ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,seed", [(2, 0), (2, 1), (3, 2), (3, 3), (4, 4)])
def test_mgda_is_the_min_norm_point(m, seed):
    g = _grads(m, dim=6, seed=seed, conflict=True)
    H = g @ g.T
    d, a = _direction("mgda", g)
    assert abs(float(a.sum()) - 1) < 1e-12 and (a >= 0).all()
    assert all(float(d @ gi) >= float(d @ d) - 1e-10 for gi in g)
    if m <= 3:
        best, _ = _grid_simplex_min(lambda p: float(p @ H @ p), m, 400 if m == 2 else 200)
        assert float(a @ H @ a) <= best + 1e-12


def test_mgda_m2_closed_form_and_pareto_stationary_point():
    g = _grads(2, seed=9, conflict=True)
    _, a = _direction("mgda", g)
    w1 = float((g[1] - g[0]) @ g[1] / (g[0] - g[1]).norm() ** 2)
    assert float(a[0]) == pytest.approx(min(max(w1, 0.0), 1.0), abs=1e-12)
    opposed = torch.stack([g[0], -2.0 * g[0]])
    d, _ = _direction("mgda", opposed)
    assert d.norm() < 1e-12


def test_iterative_solver_beyond_exact_range_agrees_with_exact():
    from framework.objectives import _gradients

    g = _grads(4, dim=8, seed=1, conflict=True)
    H, w = g @ g.T, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=D)
    exact = combine("raco", H, w, c=0.4, clip=False)
    limit = _gradients.EXACT_MAX_M
    _gradients.EXACT_MAX_M = 2
    try:
        iterative = combine("raco", H, w, c=0.4, clip=False)
    finally:
        _gradients.EXACT_MAX_M = limit
    assert iterative.case == "iterative"
    b, s = H @ w, exact.shift
    assert _phi(iterative.simplex_point, b, s, H) == pytest.approx(_phi(exact.simplex_point, b, s, H), abs=1e-7)
