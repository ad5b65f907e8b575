import math

import pytest
import torch

from framework.objectives import SequenceStats, build_objective

from .helpers import random_stats, ratio_stats, tensor


def naive_listmle(scores, labels):
    order = sorted(range(len(scores)), key=lambda i: -labels[i])
    s = [scores[i] for i in order]
    return sum(math.log(sum(math.exp(v) for v in s[k:])) - s[k] for k in range(len(s) - 1))


def test_k2_is_dpo():
    policy, reference = random_stats(16, 2, seed=30)
    listmle = build_objective("listmle", beta=0.2).loss(policy, reference, {"scores": tensor([[2.0, 1.0]] * 16)})
    torch.testing.assert_close(listmle.losses, build_objective("dpo", beta=0.2).loss(policy, reference, {}).losses)


def test_hand_list_and_label_order():
    rho, labels = tensor([[0.4, -1.0, 2.0, 0.1]]), tensor([[0.3, 0.9, 0.1, 0.5]])
    policy, reference = ratio_stats(rho)
    out = build_objective("listmle", beta=1.0).loss(policy, reference, {"scores": labels})
    torch.testing.assert_close(out.losses, tensor([naive_listmle(rho[0].tolist(), labels[0].tolist())]))


def test_shift_invariance_and_growing_gaps_decrease_loss():
    obj = build_objective("listmle", beta=1.0)
    labels = tensor([[3.0, 2.0, 1.0]])
    losses = []
    for gap in (0.0, 1.0, 5.0, 20.0):
        policy, reference = ratio_stats(tensor([[2 * gap, gap, 0.0]]))
        losses.append(float(obj.loss(policy, reference, {"scores": labels}).losses))
        shifted, _ = ratio_stats(tensor([[2 * gap + 7, gap + 7, 7.0]]))
        torch.testing.assert_close(obj.loss(shifted, reference, {"scores": labels}).losses, tensor([losses[-1]]))
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1e-8
    assert losses[0] == pytest.approx(math.log(3) + math.log(2), abs=1e-12)


def test_mask_equals_truncated_list():
    policy, reference = random_stats(3, 4, seed=31)
    labels = torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]] * 3)
    keep = torch.tensor([0, 2, 3])
    garbage = policy.logps.detach().clone()
    garbage[:, 1] = float("nan")
    obj = build_objective("listmle")
    masked = obj.loss(SequenceStats(garbage, policy.lengths), reference, {"scores": labels, "mask": mask}).losses
    truncated = obj.loss(SequenceStats(policy.logps[:, keep], policy.lengths[:, keep]), SequenceStats(reference.logps[:, keep], reference.lengths[:, keep]), {"scores": labels[:, keep]}).losses
    torch.testing.assert_close(masked, truncated)
