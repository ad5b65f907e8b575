import pytest
import torch

from framework.objectives import build_objective

from .helpers import grad_of, ratio_stats, stats, tensor


def _loss(rho, lengths, **kw):
    policy, reference = ratio_stats(rho, lengths)
    return build_objective("ipo", **kw).loss(policy, reference, {}).losses


@pytest.mark.parametrize("length_normalized", [True, False])
def test_argmin_and_value_at_reference(length_normalized):
    tau = 0.25
    target = 1 / (2 * tau)
    lengths = tensor([[1.0, 1.0]])
    torch.testing.assert_close(_loss(tensor([[0.0, 0.0]]), lengths, beta=tau, length_normalized=length_normalized), tensor([1 / (4 * tau**2)]))
    h = tensor([target], requires_grad=True)
    rho = torch.stack([h, torch.zeros_like(h)], 1)
    loss = _loss(rho, lengths, beta=tau, length_normalized=length_normalized)
    torch.testing.assert_close(loss, tensor([0.0]))
    assert float(grad_of(loss, h)) == 0.0


def test_symmetric_around_target():
    tau = 0.1
    d = tensor([0.5, 3.0, 7.0])
    above = torch.stack([5.0 + d, torch.zeros_like(d)], 1)
    below = torch.stack([5.0 - d, torch.zeros_like(d)], 1)
    ones = torch.ones(3, 2, dtype=torch.float64)
    torch.testing.assert_close(_loss(above, ones, beta=tau), _loss(below, ones, beta=tau))


def test_length_normalized_uses_per_token_means():
    rho, lengths = tensor([[6.0, -4.0]]), tensor([[3.0, 2.0]])
    mean_form = _loss(rho, lengths, beta=0.5)  # h̃ = 2 − (−2) = 4, target 1
    sum_form = _loss(rho, lengths, beta=0.5, length_normalized=False)  # h = 10
    torch.testing.assert_close(mean_form, tensor([9.0]))
    torch.testing.assert_close(sum_form, tensor([81.0]))


def test_metrics_use_summed_ratios():
    policy, reference = stats([[-3.0, -9.0]], [[3, 2]]), stats([[-4.0, -8.0]], [[3, 2]])
    out = build_objective("ipo", beta=0.1).loss(policy, reference, {})
    torch.testing.assert_close(out.metrics["rewards/chosen"], tensor([0.1]))
    torch.testing.assert_close(out.metrics["rewards/rejected"], tensor([-0.1]))
