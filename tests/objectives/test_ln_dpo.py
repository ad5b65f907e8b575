import torch

from framework.objectives import build_objective

from .helpers import LOG2, random_stats, stats


def test_policy_equals_reference_gives_log2():
    policy, _ = random_stats(5, 2, seed=7, requires_grad=False)
    out = build_objective("ln_dpo", beta=3.0).loss(policy, policy, {})
    torch.testing.assert_close(out.losses, torch.full((5,), LOG2, dtype=torch.float64))


def test_equal_lengths_reduce_to_dpo_with_scaled_beta():
    policy, reference = random_stats(8, 2, seed=8, requires_grad=False)
    T = 17.0
    lengths = torch.full_like(policy.lengths, T)
    policy, reference = stats(policy.logps, lengths), stats(reference.logps, lengths)
    ln = build_objective("ln_dpo", beta=2.0).loss(policy, reference, {}).losses
    torch.testing.assert_close(ln, build_objective("dpo", beta=2.0 / T).loss(policy, reference, {}).losses)


def test_invariant_to_scaling_ratio_and_length_together():
    policy, reference = random_stats(8, 2, seed=9, requires_grad=False)
    scale = torch.tensor([[3.0, 0.5]], dtype=torch.float64)
    scaled_p = stats(policy.logps * scale, policy.lengths * scale)
    scaled_r = stats(reference.logps * scale, reference.lengths * scale)
    obj = build_objective("ln_dpo", beta=1.5)
    torch.testing.assert_close(obj.loss(scaled_p, scaled_r, {}).losses, obj.loss(policy, reference, {}).losses)
