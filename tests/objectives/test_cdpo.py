import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import LOG2, grad_of, random_stats, ratio_stats, tensor


def test_zero_smoothing_is_dpo():
    policy, reference = random_stats(16, 2, seed=4)
    cdpo = build_objective("cdpo", beta=0.2, label_smoothing=0.0).loss(policy, reference, {}).losses
    dpo = build_objective("dpo", beta=0.2).loss(policy, reference, {}).losses
    torch.testing.assert_close(cdpo, dpo)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.49])
def test_zero_margin_gives_log2(eps):
    policy, reference = ratio_stats(tensor([[1.5, 1.5]]))
    out = build_objective("cdpo", beta=0.1, label_smoothing=eps).loss(policy, reference, {})
    torch.testing.assert_close(out.losses, tensor([LOG2]))


def test_finite_minimiser():
    beta, eps = 0.1, 0.2
    h_star = math.log((1 - eps) / eps) / beta
    assert h_star == pytest.approx(13.863, abs=1e-3)
    hs = tensor([h_star - 1.0, h_star, h_star + 1.0], requires_grad=True)
    policy, reference = ratio_stats(torch.stack([hs, torch.zeros_like(hs)], 1))
    losses = build_objective("cdpo", beta=beta, label_smoothing=eps).loss(policy, reference, {}).losses
    assert losses[1] < losses[0] and losses[1] < losses[2]
    assert abs(float(grad_of(losses[1], hs)[1])) < 1e-12


def test_hand_value():
    policy, reference = ratio_stats(tensor([[4.0, -6.0]]))  # βh = 1 at β = 0.1
    out = build_objective("cdpo", beta=0.1, label_smoothing=0.25).loss(policy, reference, {})
    expected = 0.75 * math.log1p(math.exp(-1.0)) + 0.25 * math.log1p(math.exp(1.0))
    torch.testing.assert_close(out.losses, tensor([expected]))


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_rejects_bad_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        build_objective("cdpo", label_smoothing=eps)
