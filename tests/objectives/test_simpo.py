import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import random_stats, stats, tensor


def test_equal_means_give_softplus_gamma():
    policy = stats([[-30.0, -10.0]], [[30, 10]])
    out = build_objective("simpo", beta=2.0, gamma=0.5).loss(policy, None, {})
    torch.testing.assert_close(out.losses, tensor([math.log1p(math.exp(0.5))]))
    assert float(out.losses) == pytest.approx(0.974, abs=5e-4)


def test_gamma_zero_is_ln_dpo_with_uniform_reference():
    policy, _ = random_stats(8, 2, seed=10, requires_grad=False)
    uniform_ref = stats(-math.log(50.0) * policy.lengths, policy.lengths)  # same log-prob for every token
    simpo = build_objective("simpo", beta=2.5, gamma=0.0).loss(policy, None, {}).losses
    torch.testing.assert_close(simpo, build_objective("ln_dpo", beta=2.5).loss(policy, uniform_ref, {}).losses)


def test_independent_of_reference_and_hand_value():
    policy = stats([[-6.0, -12.0]], [[3, 4]])  # means −2, −3
    obj = build_objective("simpo", beta=2.0, gamma=1.0)
    expected = math.log1p(math.exp(-(2.0 * -2.0 - 2.0 * -3.0 - 1.0)))
    torch.testing.assert_close(obj.loss(policy, None, {}).losses, tensor([expected]))
    other_ref = stats([[-1.0, -100.0]], [[3, 4]])
    torch.testing.assert_close(obj.loss(policy, other_ref, {}).losses, tensor([expected]))


def test_sft_term_adds_weighted_chosen_mean_nll():
    policy = stats([[-6.0, -12.0]], [[3, 4]])
    base = build_objective("simpo", beta=2.0, gamma=1.0).loss(policy, None, {}).losses
    with_sft = build_objective("simpo", beta=2.0, gamma=1.0, sft_weight=0.5).loss(policy, None, {}).losses
    torch.testing.assert_close(with_sft - base, tensor([0.5 * 2.0]))
