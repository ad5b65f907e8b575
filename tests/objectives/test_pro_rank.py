import math

import torch

from framework.objectives import SequenceStats, build_objective
from framework.objectives._listwise import plackett_luce_terms
from framework.objectives.pro_rank import ranking_terms

from .helpers import grad_of, stats, tensor


def naive_pro(scores, rewards):
    order = sorted(range(len(scores)), key=lambda i: -rewards[i])
    s, r = [scores[i] for i in order], [rewards[i] for i in order]
    total = 0.0
    for k in range(len(s) - 1):
        temps = [r[k] - r[i] for i in range(k + 1, len(s))]
        t_kk = max(temps)
        total += math.log(math.exp(s[k] * t_kk) + sum(math.exp(s[i] * t) for i, t in zip(range(k + 1, len(s)), temps))) - s[k] * t_kk
    return total


def test_n2_formula():
    policy = stats([[-6.0, -2.0], [-1.0, -9.0]], [[3, 2], [1, 3]])  # means (−2, −1), (−1, −3)
    rewards = tensor([[0.7, 0.2], [1.0, 3.0]])
    out = build_objective("pro_rank", sft_weight=0.0).loss(policy, None, {"scores": rewards})
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    torch.testing.assert_close(out.losses, tensor([sp(-0.5 * (-2.0 + 1.0)), sp(-2.0 * (-3.0 + 1.0))]))


def test_matches_naive_on_hand_list_with_sft_term():
    logps, lengths = tensor([[-4.0, -9.0, -2.0, -12.0]]), tensor([[2.0, 3.0, 1.0, 4.0]])
    rewards = tensor([[0.1, 0.9, -0.3, 0.4]])
    out = build_objective("pro_rank", sft_weight=0.05).loss(stats(logps, lengths), None, {"scores": rewards})
    rank = naive_pro((logps / lengths)[0].tolist(), rewards[0].tolist())
    sft = 0.05 * 3**2 * 9.0  # (n−1)²·(−ℓ) of the top-reward response (index 1, summed log-prob −9)
    torch.testing.assert_close(out.losses, tensor([rank + sft]))


def test_equal_rewards_give_log_counts_and_no_gradient():
    logps = tensor([[-3.0, -1.0, -7.0, -2.0]], requires_grad=True)
    out = build_objective("pro_rank", sft_weight=0.0).loss(stats(logps), None, {"scores": tensor([[0.5] * 4])})
    torch.testing.assert_close(out.losses, tensor([math.log(4) + math.log(3) + math.log(2)]))
    torch.testing.assert_close(grad_of(out.losses, logps), torch.zeros_like(logps))


def test_unit_temperatures_reduce_to_listmle():
    scores = torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    torch.testing.assert_close(ranking_terms(scores, torch.ones(3, 5, 5, dtype=torch.float64), mask), plackett_luce_terms(scores, mask))


def test_mask_equals_truncated_list():
    logps, lengths = tensor([[-4.0, -9.0, -2.0, float("nan")]]), tensor([[2.0, 3.0, 1.0, 1.0]])
    rewards = tensor([[0.1, 0.9, -0.3, 5.0]])
    obj = build_objective("pro_rank")
    masked = obj.loss(SequenceStats(logps, lengths), None, {"scores": rewards, "mask": torch.tensor([[True, True, True, False]])}).losses
    truncated = obj.loss(SequenceStats(logps[:, :3], lengths[:, :3]), None, {"scores": rewards[:, :3]}).losses
    torch.testing.assert_close(masked, truncated)
