import math

import pytest
import torch

from framework.objectives import build_objective
from framework.objectives._common import log1mexp

from .helpers import LOG2, grad_of, random_stats, stats, tensor


def test_equal_probabilities_give_lambda_log2():
    policy = stats([[-4.0, -2.0]], [[4, 2]])
    out = build_objective("orpo", beta=0.3, nll_reduction="sequence").loss(policy, None, {})
    torch.testing.assert_close(out.metrics["odds_ratio_loss"], tensor([0.3 * LOG2]))
    torch.testing.assert_close(out.losses, tensor([1.0 + 0.3 * LOG2]))


def test_lambda_zero_is_sft():
    policy, _ = random_stats(6, 2, seed=11)
    for reduction in ("token", "sequence"):
        orpo = build_objective("orpo", beta=0.0, nll_reduction=reduction).loss(policy, None, {}).losses
        sft = build_objective("sft", reduction=reduction).loss(policy, None, {}).losses
        torch.testing.assert_close(orpo, sft)


def test_small_probabilities_approach_simpo():
    lam = 0.2
    policy = stats([[-400.0, -420.0], [-300.0, -290.0]], [[20, 20], [10, 10]])  # p ≈ e^-20 … e^-29
    out = build_objective("orpo", beta=lam).loss(policy, None, {})
    simpo = build_objective("simpo", beta=1.0, gamma=0.0).loss(policy, None, {}).losses
    torch.testing.assert_close(out.metrics["odds_ratio_loss"], lam * simpo, rtol=1e-6, atol=1e-8)


def test_hand_value():
    policy = stats([[-0.5, -1.0]], [[1, 1]])
    lo = lambda m: m - math.log(1 - math.exp(m))  # noqa: E731
    expected_or = 0.1 * math.log1p(math.exp(-(lo(-0.5) - lo(-1.0))))
    out = build_objective("orpo", beta=0.1, nll_reduction="sequence").loss(policy, None, {})
    torch.testing.assert_close(out.losses, tensor([0.5 + expected_or]))


def test_log1mexp_is_stable_near_zero_and_far_below():
    x = tensor([-1e-12, -1e-5, -0.5, -math.log(2.0), -5.0, -50.0, -800.0], requires_grad=True)
    y = log1mexp(x)
    exact = [math.log(-math.expm1(v)) for v in x.tolist()[:5]] + [math.log1p(-math.exp(-50.0)), 0.0]
    torch.testing.assert_close(y, tensor(exact))
    assert torch.isfinite(grad_of(y, x)).all()
    near_one = stats([[-1e-9, -3.0]], [[10, 10]])
    out = build_objective("orpo").loss(near_one, None, {})
    assert torch.isfinite(out.losses).all()


def test_token_reduction_gives_the_global_token_mean():
    policy, _ = random_stats(7, 2, seed=12)
    losses = build_objective("orpo", beta=0.0, nll_reduction="token").loss(policy, None, {}).losses
    token_mean = -policy.logps[:, 0].sum() / policy.lengths[:, 0].sum()
    torch.testing.assert_close(losses.mean(), token_mean)


def test_rejects_bad_reduction():
    with pytest.raises(ValueError, match="nll_reduction"):
        build_objective("orpo", nll_reduction="mean")
