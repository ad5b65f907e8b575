import pytest
import torch

from framework.objectives import build_objective
from framework.objectives.mapo import bounded_score

from .helpers import LOG2, random_stats, stats, tensor


def test_bounded_score_range_values_and_monotonicity():
    u = torch.linspace(0, 30, 301, dtype=torch.float64)
    s = bounded_score(u)
    assert (s > 0).all() and (s <= 1).all()
    assert (s[1:] < s[:-1]).all()
    assert float(bounded_score(tensor([0.0]))) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(bounded_score(tensor([0.5, 5.0])), tensor([0.7707470412, 0.0339182745]))


def test_equal_u_gives_beta_log2_margin_term():
    policy = stats([[-6.0, -3.0]], [[4, 2]])  # equal per-token means
    out = build_objective("mapo", beta=0.1).loss(policy, None, {})
    torch.testing.assert_close(out.metrics["margin_loss"], tensor([0.1 * LOG2]))
    torch.testing.assert_close(out.losses, tensor([1.5 + 0.1 * LOG2]))


def test_beta_zero_is_sft():
    policy, _ = random_stats(6, 2, seed=13)
    mapo = build_objective("mapo", beta=0.0).loss(policy, None, {}).losses
    torch.testing.assert_close(mapo, build_objective("sft", reduction="sequence").loss(policy, None, {}).losses)


def test_more_likely_chosen_lowers_margin_term():
    close = build_objective("mapo").loss(stats([[-1.0, -1.2]]), None, {}).metrics["margin_loss"]
    apart = build_objective("mapo").loss(stats([[-1.0, -3.0]]), None, {}).metrics["margin_loss"]
    assert apart < close < 0.1 * LOG2
