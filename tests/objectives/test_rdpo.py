import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import LOG2, grad_of, random_stats, ratio_stats, tensor


def _losses(h, eps, beta=0.1):
    policy, reference = ratio_stats(torch.stack([h, torch.zeros_like(h)], 1))
    return build_objective("rdpo", beta=beta, label_smoothing=eps).loss(policy, reference, {}).losses


def test_zero_flip_rate_is_dpo():
    policy, reference = random_stats(16, 2, seed=5)
    rdpo = build_objective("rdpo", beta=0.3, label_smoothing=0.0).loss(policy, reference, {}).losses
    torch.testing.assert_close(rdpo, build_objective("dpo", beta=0.3).loss(policy, reference, {}).losses)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.45])
def test_unbiased(eps):
    h = torch.linspace(-40, 40, 17, dtype=torch.float64)
    beta = 0.1
    dpo = torch.nn.functional.softplus(-beta * h)
    torch.testing.assert_close((1 - eps) * _losses(h, eps) + eps * _losses(-h, eps), dpo)


def test_log2_at_zero_and_hand_value():
    torch.testing.assert_close(_losses(tensor([0.0]), 0.3), tensor([LOG2]))
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    expected = (0.8 * sp(-2.0) - 0.2 * sp(2.0)) / 0.6
    torch.testing.assert_close(_losses(tensor([20.0]), 0.2), tensor([expected]))


def test_unbounded_below_with_nonvanishing_gradient():
    eps, beta = 0.1, 0.1
    h = tensor([1e3, 2e3], requires_grad=True)
    losses = _losses(h, eps, beta)
    assert (losses < 0).all()
    slope = -eps * beta / (1 - 2 * eps)
    torch.testing.assert_close(losses[1] - losses[0], torch.tensor(slope * 1e3, dtype=torch.float64))
    h2 = tensor([-50.0, 0.0, 50.0, 500.0], requires_grad=True)
    g = grad_of(_losses(h2, eps, beta), h2)
    assert (g.abs() >= beta * eps / (1 - 2 * eps) - 1e-12).all()


@pytest.mark.parametrize("eps", [-0.01, 0.5])
def test_rejects_bad_flip_rate(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        build_objective("rdpo", label_smoothing=eps)
