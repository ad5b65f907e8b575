import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import LOG2, grad_of, random_stats, ratio_stats, stats, tensor


def test_policy_equals_reference_gives_log2_and_gradient_minus_beta_half():
    beta = 0.3
    logps = tensor([[-12.0, -30.0], [-5.0, -7.5]], requires_grad=True)
    out = build_objective("dpo", beta=beta).loss(stats(logps), stats(logps.detach().clone()), {})
    torch.testing.assert_close(out.losses, tensor([LOG2, LOG2]))
    g = grad_of(out.losses, logps)  # ∂L/∂ℓ_w = ∂L/∂h, ∂L/∂ℓ_l = −∂L/∂h
    torch.testing.assert_close(g, tensor([[-beta / 2, beta / 2]] * 2))


def test_hand_computed_value():
    policy, reference = ratio_stats(tensor([[2.0, -1.0]]))  # h = 3
    out = build_objective("dpo", beta=0.5).loss(policy, reference, {})
    torch.testing.assert_close(out.losses, tensor([math.log1p(math.exp(-1.5))]))


def test_swap_identity():
    beta = 0.2
    policy, reference = random_stats(16, 2, seed=1, requires_grad=False)
    obj = build_objective("dpo", beta=beta)
    h = (policy.logps - reference.logps) @ tensor([1.0, -1.0])
    swap = lambda s: stats(s.logps.flip(1), s.lengths.flip(1))  # noqa: E731
    diff = obj.loss(policy, reference, {}).losses - obj.loss(swap(policy), swap(reference), {}).losses
    torch.testing.assert_close(diff, -beta * h)


def test_small_beta_limit():
    policy, reference = random_stats(8, 2, seed=2, requires_grad=False)
    h = (policy.logps - reference.logps) @ tensor([1.0, -1.0])
    beta = 1e-7
    out = build_objective("dpo", beta=beta).loss(policy, reference, {})
    torch.testing.assert_close((out.losses - LOG2) / beta, -h / 2, rtol=1e-5, atol=1e-5)


def test_large_margins_are_finite():
    policy, reference = ratio_stats(tensor([[1e4, -1e4], [-1e4, 1e4]]))
    out = build_objective("dpo", beta=0.5).loss(policy, reference, {})
    assert torch.isfinite(out.losses).all()
    torch.testing.assert_close(out.losses, tensor([0.0, 1e4]))


def test_metrics_are_the_pairwise_defaults():
    policy, reference = random_stats(4, 2, seed=3)
    out = build_objective("dpo", beta=0.1).loss(policy, reference, {})
    rho = (policy.logps - reference.logps).detach()
    torch.testing.assert_close(out.metrics["rewards/chosen"], 0.1 * rho[:, 0])
    torch.testing.assert_close(out.metrics["rewards/margin"], 0.1 * (rho[:, 0] - rho[:, 1]))
    torch.testing.assert_close(out.metrics["rewards/accuracy"], (rho[:, 0] > rho[:, 1]).to(torch.float64))
    torch.testing.assert_close(out.metrics["logps/rejected"], policy.logps[:, 1].detach())
    assert all(not m.requires_grad for m in out.metrics.values())


def test_validation_errors():
    with pytest.raises(ValueError, match="beta"):
        build_objective("dpo", beta=0.0)
    policy, reference = random_stats(2, 3)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        build_objective("dpo").loss(policy, reference, {})
    policy, _ = random_stats(2, 2)
    with pytest.raises(ValueError, match="reference"):
        build_objective("dpo").loss(policy, None, {})
