import pytest
import torch

from framework.objectives import build_objective

from .helpers import LOG2, random_stats, stats


def test_same_prompt_equals_dpo():
    policy, reference = random_stats(8, 2, seed=14)
    dove = build_objective("dove", beta=0.2).loss(policy, reference, {}).losses
    torch.testing.assert_close(dove, build_objective("dpo", beta=0.2).loss(policy, reference, {}).losses)


def test_policy_equals_reference_gives_log2_in_both_modes():
    policy, _ = random_stats(4, 2, seed=15, requires_grad=False)
    joint = stats(policy.logps, policy.lengths, prompt_logps=torch.randn(4, 2, dtype=torch.float64))
    for obj, stat in ((build_objective("dove"), policy), (build_objective("dove", joint=True), joint)):
        torch.testing.assert_close(obj.loss(stat, stat, {}).losses, torch.full((4,), LOG2, dtype=torch.float64))


def test_joint_mode_adds_prompt_log_ratio_difference():
    policy, reference = random_stats(6, 2, seed=16, requires_grad=False)
    gen = torch.Generator().manual_seed(0)
    p_prompt, r_prompt = (torch.randn(6, 2, generator=gen, dtype=torch.float64) * 5 for _ in range(2))
    policy_j = stats(policy.logps, policy.lengths, prompt_logps=p_prompt)
    reference_j = stats(reference.logps, reference.lengths, prompt_logps=r_prompt)
    beta = 0.1
    joint = build_objective("dove", beta=beta, joint=True).loss(policy_j, reference_j, {})
    conditional = build_objective("dove", beta=beta).loss(policy_j, reference_j, {})
    prompt_rho = p_prompt - r_prompt
    shift = beta * (prompt_rho[:, 0] - prompt_rho[:, 1])
    torch.testing.assert_close(joint.metrics["rewards/margin"] - conditional.metrics["rewards/margin"], shift)
    torch.testing.assert_close(joint.losses, torch.nn.functional.softplus(-(conditional.metrics["rewards/margin"] + shift)))


def test_requires_prompt_logps_only_in_joint_mode():
    assert build_objective("dove").requires == ()
    assert build_objective("dove", joint=True).requires == ("prompt_logps",)
    policy, reference = random_stats(2, 2)
    with pytest.raises(ValueError, match="prompt_logps"):
        build_objective("dove", joint=True).loss(policy, reference, {})
