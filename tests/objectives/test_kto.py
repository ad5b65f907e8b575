import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import grad_of, ratio_stats, stats, tensor


def _batch(labels, mismatched_rho):
    policy, reference = ratio_stats(mismatched_rho.reshape(-1, 1))
    return {"labels": torch.tensor(labels), "mismatched_policy": policy, "mismatched_reference": reference}


def test_policy_equals_reference_gives_half():
    logps = tensor([[-5.0], [-8.0], [-1.0]])
    batch = _batch([True, False, True], torch.zeros(3, dtype=torch.float64))
    out = build_objective("kto").loss(stats(logps), stats(logps), batch)
    torch.testing.assert_close(out.losses, tensor([0.5, 0.5, 0.5]))
    assert float(out.metrics["kl"]) == 0.0


def test_reference_point_is_clamped_mean_of_mismatched():
    policy, reference = ratio_stats(tensor([[1.0], [2.0]]))
    obj = build_objective("kto", beta=0.5)
    positive = obj.loss(policy, reference, _batch([True, False], tensor([0.5, 1.5])))
    assert float(positive.metrics["kl"]) == pytest.approx(1.0)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    torch.testing.assert_close(positive.losses, tensor([1 - sig(0.5 * (1.0 - 1.0)), 1 - sig(0.5 * (1.0 - 2.0))]))
    negative = obj.loss(policy, reference, _batch([True, False], tensor([-3.0, 1.0])))
    assert float(negative.metrics["kl"]) == 0.0


def test_reference_point_is_the_step_window_mean_and_is_detached():
    obj = build_objective("kto")
    mis = tensor([1.0, 3.0], requires_grad=True)
    policy, reference = ratio_stats(tensor([[0.0], [0.0]]))
    batch = {**_batch([True, False], mis), "weights": tensor([1.0, 1.0])}
    sums = obj.window_stats(batch)["kl"]  # what the trainer adds over the step's micro-batches and ranks
    torch.testing.assert_close(sums, tensor([4.0, 2.0]))
    assert not sums.requires_grad
    out = obj.loss(policy, reference, {**batch, "window_means": {"kl": torch.tensor(4.0, dtype=torch.float64)}})
    assert float(out.metrics["kl"]) == 4.0  # the trainer's step-wide mean, not this batch's 2.0
    rho = tensor([[0.3], [0.1]], requires_grad=True)
    p, r = ratio_stats(rho)
    obj.loss(p, r, batch).losses.sum().backward()
    assert mis.grad is None  # no gradient path into the reference point


def test_padding_rows_do_not_enter_the_reference_point():
    obj = build_objective("kto")
    policy, reference = ratio_stats(tensor([[0.0], [0.0], [0.0]]))
    batch = {**_batch([True, False, True], tensor([0.5, 1.5, 100.0])), "weights": tensor([1.0, 1.0, 0.0])}
    torch.testing.assert_close(obj.window_stats(batch)["kl"], tensor([2.0, 2.0]))
    assert float(obj.loss(policy, reference, batch).metrics["kl"]) == pytest.approx(1.0)


def test_label_swap_symmetry():
    z0 = 0.7
    obj = build_objective("kto", beta=0.3)
    d = tensor([[-2.0], [0.5], [4.0]])
    policy, reference = ratio_stats(z0 + d)
    mirrored_p, mirrored_r = ratio_stats(z0 - d)
    mis = torch.full((3,), z0, dtype=torch.float64)
    a = obj.loss(policy, reference, _batch([True, True, True], mis)).losses
    b = obj.loss(mirrored_p, mirrored_r, _batch([False, False, False], mis)).losses
    torch.testing.assert_close(a, b)


def test_gradient_at_reference_point():
    beta, z0 = 0.4, 1.2
    rho = tensor([[z0], [z0]], requires_grad=True)
    policy, reference = ratio_stats(rho)
    out = build_objective("kto", beta=beta).loss(policy, reference, _batch([True, False], torch.full((2,), z0, dtype=torch.float64)))
    torch.testing.assert_close(grad_of(out.losses, rho), tensor([[-beta / 4], [beta / 4]]))


def test_class_weights_and_metrics():
    policy, reference = ratio_stats(tensor([[0.0], [0.0]]))
    out = build_objective("kto", desirable_weight=2.0, undesirable_weight=0.5).loss(policy, reference, _batch([True, False], tensor([0.0, 0.0])))
    torch.testing.assert_close(out.losses, tensor([1.0, 0.25]))
    assert math.isnan(float(out.metrics["rewards/chosen"][1])) and math.isnan(float(out.metrics["rewards/rejected"][0]))


def test_missing_mismatched_inputs_are_reported():
    policy, reference = ratio_stats(tensor([[0.0]]))
    with pytest.raises(KeyError, match="mismatched_policy"):
        build_objective("kto").loss(policy, reference, {"labels": torch.tensor([True])})
