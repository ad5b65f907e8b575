import pytest
import torch

from framework.objectives import SequenceStats, build_objective

from .helpers import grad_of, random_stats, ratio_stats, tensor


def test_k2_one_hot_target_is_dpo():
    policy, reference = random_stats(16, 2, seed=40)
    listnet = build_objective("listnet", beta=0.3, target="proportional").loss(policy, reference, {"scores": tensor([[1.0, 0.0]] * 16)})
    torch.testing.assert_close(listnet.losses, build_objective("dpo", beta=0.3).loss(policy, reference, {}).losses)


def test_shift_invariance_and_gradient_is_softmax_minus_target():
    rho = tensor([[0.5, -1.0, 2.0, 0.0]], requires_grad=True)
    labels = tensor([[1.0, 0.0, 2.0, 0.5]])
    policy, reference = ratio_stats(rho)
    obj = build_objective("listnet", beta=0.5, temperature=0.7)
    out = obj.loss(policy, reference, {"scores": labels})
    shifted, _ = ratio_stats(rho.detach() + 9.0)
    torch.testing.assert_close(obj.loss(shifted, reference, {"scores": labels}).losses, out.losses.detach())
    q = torch.softmax(labels / 0.7, dim=1)
    expected = 0.5 * (torch.softmax(0.5 * rho.detach(), dim=1) - q)  # ∂L/∂ρ = β·(softmax(s) − q)
    g = grad_of(out.losses, rho)
    torch.testing.assert_close(g, expected)
    assert abs(float(g.sum())) < 1e-12


def test_proportional_target_needs_nonnegative_scores():
    policy, reference = random_stats(1, 3)
    with pytest.raises(ValueError, match="non-negative"):
        build_objective("listnet", target="proportional").loss(policy, reference, {"scores": tensor([[1.0, -1.0, 0.5]])})


def test_mask_equals_truncated_list():
    policy, reference = random_stats(2, 3, seed=41)
    labels = tensor([[0.2, 0.8, 0.5]] * 2)
    mask = torch.tensor([[True, True, False]] * 2)
    garbage = policy.logps.detach().clone()
    garbage[:, 2] = float("nan")
    obj = build_objective("listnet")
    masked = obj.loss(SequenceStats(garbage, policy.lengths), reference, {"scores": labels, "mask": mask}).losses
    truncated = obj.loss(SequenceStats(policy.logps[:, :2], policy.lengths[:, :2]), SequenceStats(reference.logps[:, :2], reference.lengths[:, :2]), {"scores": labels[:, :2]}).losses
    torch.testing.assert_close(masked, truncated)
