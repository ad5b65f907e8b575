import torch

from framework.objectives import build_objective

from .helpers import grad_of, ratio_stats, stats, tensor


def test_zero_loss_and_gradient_once_margin_reached():
    beta = 0.2
    h = tensor([5.0, 6.0, 50.0], requires_grad=True)  # β·h ≥ 1
    policy, reference = ratio_stats(torch.stack([h, torch.zeros_like(h)], 1))
    losses = build_objective("hinge", beta=beta).loss(policy, reference, {}).losses
    torch.testing.assert_close(losses, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(grad_of(losses, h), torch.zeros(3, dtype=torch.float64))


def test_one_at_zero_margin_and_linear_inside():
    policy, reference = ratio_stats(tensor([[0.0, 0.0], [1.0, -1.0]]))
    losses = build_objective("hinge", beta=0.1).loss(policy, reference, {}).losses
    torch.testing.assert_close(losses, tensor([1.0, 0.8]))


def test_equals_beta_times_slic_calibration_with_constant_reference():
    beta = 0.25
    gen = torch.Generator().manual_seed(6)
    policy = stats(-20 + 4 * torch.randn(32, 2, generator=gen, dtype=torch.float64))  # |h| around δ = 4
    constant_ref = stats(torch.full_like(policy.logps, -7.0), policy.lengths)
    hinge = build_objective("hinge", beta=beta).loss(policy, constant_ref, {}).losses
    slic = build_objective("slic", delta=1 / beta, sft_weight=0.0).loss(policy, None, {}).losses
    assert (hinge > 0).any() and (hinge == 0).any()
    torch.testing.assert_close(hinge, beta * slic)
