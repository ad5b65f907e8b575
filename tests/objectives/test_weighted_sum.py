"""Weighted-sum multi-objective baseline (OBJECTIVES.md §5.1) on hand-made and random tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from framework.objectives import build_objective
from tests.objectives.helpers import LOG2, DTYPE, random_stats, ratio_stats, stats, tensor


def _scores(rows):
    """objective_scores [B, 2, M] from per-row [[s(y0) per objective], [s(y1) per objective]]."""
    return tensor(rows)


def test_policy_equals_reference_gives_log2_per_objective():
    policy = stats([[-3.0, -5.0], [-2.0, -9.0]])
    scores = _scores([[[1.0, -4.0], [0.0, -2.0]], [[0.0, -1.0], [3.0, -6.0]]])
    out = build_objective("weighted_sum", weights=[0.7, 0.3]).loss(policy, policy, {"objective_scores": scores})
    assert torch.allclose(out.losses, torch.full((2,), LOG2, dtype=DTYPE))
    assert torch.allclose(out.metrics["objective_0/loss"], torch.full((2,), LOG2, dtype=DTYPE))


@pytest.mark.parametrize("k", [0, 1])
def test_one_hot_weight_is_dpo_on_that_objectives_ordering(k):
    policy, reference = random_stats(6, 2, seed=1)
    scores = torch.randn(6, 2, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    w = [0.0, 0.0]
    w[k] = 1.0
    out = build_objective("weighted_sum", weights=w).loss(policy, reference, {"objective_scores": scores})
    rho = policy.logps - reference.logps
    sign = torch.sign(scores[:, 0, k] - scores[:, 1, k])
    expected = F.softplus(-0.1 * sign * (rho[:, 0] - rho[:, 1]))
    assert torch.allclose(out.losses, expected)


def test_gradient_is_weighted_sum_of_component_gradients():
    policy, reference = random_stats(5, 2, seed=3)
    scores = torch.randn(5, 2, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    w = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
    obj = build_objective("weighted_sum", weights=w.tolist())
    out = obj.loss(policy, reference, {"objective_scores": scores})
    (total,) = torch.autograd.grad(out.losses.sum(), policy.logps)
    expected = torch.zeros_like(total)
    for i in range(3):
        one_hot = [0.0] * 3
        one_hot[i] = 1.0
        single = build_objective("weighted_sum", weights=one_hot).loss(policy, reference, {"objective_scores": scores})
        (g,) = torch.autograd.grad(single.losses.sum(), policy.logps)
        expected += w[i] * g
    assert torch.allclose(total, expected)


def test_ties_give_zero_component_and_nan_accuracy():
    policy, reference = ratio_stats(tensor([[1.0, -1.0], [0.5, 0.0]]))
    scores = _scores([[[2.0, 1.0], [2.0, 0.0]], [[1.0, 5.0], [0.0, 5.0]]])
    out = build_objective("weighted_sum", weights=[0.5, 0.5]).loss(policy, reference, {"objective_scores": scores})
    assert float(out.metrics["objective_0/loss"][0]) == 0.0 and torch.isnan(out.metrics["objective_0/accuracy"][0])
    assert float(out.metrics["objective_1/loss"][1]) == 0.0 and torch.isnan(out.metrics["objective_1/accuracy"][1])
    assert float(out.metrics["objective_1/accuracy"][0]) == 1.0  # objective 1 prefers y0, margin 0.2 > 0
    assert float(out.losses[0]) == pytest.approx(0.5 * float(F.softplus(tensor(-0.2))))


def test_names_come_from_the_batch():
    policy, reference = random_stats(2, 2, seed=0)
    scores = torch.randn(2, 2, 2, dtype=DTYPE)
    out = build_objective("weighted_sum").loss(policy, reference, {"objective_scores": scores,
                                                                   "objective_names": ["topic", "brevity"]})
    assert {"topic/loss", "topic/accuracy", "brevity/loss", "brevity/accuracy"} <= set(out.metrics)


def test_bad_weights_and_components_are_rejected():
    for bad in ([-1.0, 2.0], [0.0, 0.0], []):
        with pytest.raises(ValueError, match="weights"):
            build_objective("weighted_sum", weights=bad)
    for component in ("kto", "bt_reward", "lipo_lambda", "dove"):
        with pytest.raises(ValueError, match="component"):
            build_objective("weighted_sum", component=component)
    policy, reference = random_stats(2, 2, seed=0)
    with pytest.raises(ValueError, match="3 weights for 2 objectives"):
        build_objective("weighted_sum", weights=[1, 1, 1]).loss(policy, reference, {"objective_scores": torch.zeros(2, 2, 2, dtype=DTYPE)})
    with pytest.raises(ValueError, match=r"\[B, 2, M\]"):
        build_objective("weighted_sum").loss(policy, reference, {"objective_scores": torch.zeros(2, 2, dtype=DTYPE)})


def test_reference_free_component_needs_no_reference():
    obj = build_objective("weighted_sum", component="simpo", component_args={"beta": 2.0, "gamma": 0.5})
    assert obj.needs_reference is False
    policy, _ = random_stats(3, 2, seed=5)
    out = obj.loss(policy, None, {"objective_scores": torch.randn(3, 2, 2, dtype=DTYPE)})
    assert torch.isfinite(out.losses).all()
