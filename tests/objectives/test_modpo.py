"""MODPO (OBJECTIVES.md §5.2): the three test properties plus ties and validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from framework.objectives import build_objective
from tests.objectives.helpers import DTYPE, random_stats


def _inputs(seed: int, m: int = 3, batch: int = 6):
    policy, reference = random_stats(batch, 2, seed=seed)
    scores = torch.randn(batch, 2, m, dtype=DTYPE, generator=torch.Generator().manual_seed(seed + 100))
    return policy, reference, scores


def _dpo(policy, reference, scores, k, beta):
    sign = torch.sign(scores[:, 0, k] - scores[:, 1, k])
    rho = policy.logps - reference.logps
    return F.softplus(-beta * sign * (rho[:, 0] - rho[:, 1]))


@pytest.mark.parametrize("k", [0, 2])
def test_target_weight_one_gives_dpo(k):
    policy, reference, scores = _inputs(0)
    w = [0.0, 0.0, 0.0]
    w[k] = 1.0
    out = build_objective("modpo", beta=0.1, weights=w, target=k).loss(policy, reference, {"objective_scores": scores})
    assert torch.allclose(out.losses, _dpo(policy, reference, scores, k, 0.1))


def test_equal_margin_rewards_give_dpo_with_beta_over_wk():
    policy, reference, scores = _inputs(1)
    scores[:, 1, 1:] = scores[:, 0, 1:]  # the other objectives score both responses the same
    out = build_objective("modpo", beta=0.2, weights=[0.25, 0.5, 0.25], target=0).loss(policy, reference, {"objective_scores": scores})
    assert torch.allclose(out.losses, _dpo(policy, reference, scores, 0, 0.2 / 0.25))


@pytest.mark.parametrize("other", [1, 2])
def test_constant_shift_of_a_margin_reward_changes_nothing(other):
    policy, reference, scores = _inputs(2)
    obj = build_objective("modpo", weights=[0.5, 0.3, 0.2], target=0)
    before = obj.loss(policy, reference, {"objective_scores": scores}).losses
    shifted = scores.clone()
    shifted[:, :, other] += 7.5
    after = obj.loss(policy, reference, {"objective_scores": shifted}).losses
    assert torch.allclose(before, after)


def test_margin_rewards_enter_as_in_the_formula():
    policy, reference, scores = _inputs(3, m=2, batch=4)
    w = torch.tensor([0.6, 0.4], dtype=DTYPE)
    out = build_objective("modpo", beta=0.1, weights=w.tolist(), target=0).loss(policy, reference, {"objective_scores": scores})
    sign = torch.sign(scores[:, 0, 0] - scores[:, 1, 0])
    rho = policy.logps - reference.logps
    h = sign * (rho[:, 0] - rho[:, 1])
    r_margin = sign * (scores[:, 0, 1] - scores[:, 1, 1])
    expected = F.softplus(-(0.1 * h - w[1] * r_margin) / w[0])
    assert torch.allclose(out.losses, expected)


def test_target_ties_give_zero_loss_and_validation():
    policy, reference, scores = _inputs(4, m=2, batch=3)
    scores[0, 1, 0] = scores[0, 0, 0]
    losses = build_objective("modpo").loss(policy, reference, {"objective_scores": scores}).losses.detach()
    assert float(losses[0]) == 0.0 and (losses[1:] > 0).all()
    with pytest.raises(ValueError, match="target"):
        build_objective("modpo", target=-1)
    with pytest.raises(ValueError, match="weight must be > 0"):
        build_objective("modpo", weights=[0.0, 1.0], target=0)
    with pytest.raises(ValueError, match="data has 2 objectives"):
        build_objective("modpo", target=5).loss(policy, reference, {"objective_scores": scores})
