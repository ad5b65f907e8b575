import math

import pytest
import torch

from framework.objectives import SequenceStats, build_objective

from .helpers import LOG2, tensor


def _stats(rewards):
    rewards = rewards if isinstance(rewards, torch.Tensor) else tensor(rewards)
    return SequenceStats(torch.zeros_like(rewards), torch.ones_like(rewards), rewards=rewards)


def test_equal_rewards_give_log2():
    out = build_objective("bt_reward").loss(_stats([[1.3, 1.3], [-2.0, -2.0]]), None, {})
    torch.testing.assert_close(out.losses, tensor([LOG2, LOG2]))


def test_shift_invariance_without_centering_and_swap_identity():
    rewards = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    obj = build_objective("bt_reward")
    base = obj.loss(_stats(rewards), None, {}).losses
    torch.testing.assert_close(obj.loss(_stats(rewards + 11.0), None, {}).losses, base)
    swapped = obj.loss(_stats(rewards.flip(1)), None, {}).losses
    torch.testing.assert_close(base - swapped, -(rewards[:, 0] - rewards[:, 1]))


def test_margin_and_centering_hand_value():
    obj = build_objective("bt_reward", margin=0.5, center_coefficient=0.01)
    out = obj.loss(_stats([[2.0, 1.0]]), None, {"margin": tensor([0.25])})
    expected = math.log1p(math.exp(-(1.0 - 0.75))) + 0.01 * 3.0**2
    torch.testing.assert_close(out.losses, tensor([expected]))
    torch.testing.assert_close(out.metrics["rewards/accuracy"], tensor([1.0]))
    torch.testing.assert_close(out.metrics["rewards/mean"], torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(out.metrics["rewards/std"], torch.tensor(0.5, dtype=torch.float64))


def test_needs_scalar_head_rewards():
    obj = build_objective("bt_reward")
    assert not obj.needs_reference and obj.requires == ("rewards",)
    with pytest.raises(ValueError, match="rewards"):
        obj.loss(SequenceStats(torch.zeros(2, 2), torch.ones(2, 2)), None, {})
    with pytest.raises(ValueError, match="center_coefficient"):
        build_objective("bt_reward", center_coefficient=-1.0)
