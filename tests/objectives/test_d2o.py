import math

import pytest
import torch

from framework.objectives import SequenceStats, build_objective

from .helpers import LOG2, random_stats, ratio_stats, tensor


def test_single_sample_with_alpha_equal_beta_is_dpo():
    policy, reference = random_stats(8, 2, seed=50)
    d2o = build_objective("d2o", beta=0.2, alpha=0.2).loss(policy, reference, {}).losses
    swap = lambda s: SequenceStats(s.logps.flip(1), s.lengths.flip(1))  # noqa: E731  DPO: sample chosen
    torch.testing.assert_close(d2o, build_objective("dpo", beta=0.2).loss(swap(policy), swap(reference), {}).losses)


def test_policy_equals_reference_gives_log2():
    policy, _ = random_stats(4, 5, seed=51, requires_grad=False)
    out = build_objective("d2o").loss(policy, policy, {})
    torch.testing.assert_close(out.losses, torch.full((4,), LOG2, dtype=torch.float64))


def test_hand_value_and_sample_permutation_invariance():
    rho = tensor([[-2.0, 1.0, 3.0, -1.0]])  # negative −2, samples mean 1
    policy, reference = ratio_stats(rho)
    obj = build_objective("d2o", beta=0.5, alpha=0.1)
    expected = math.log1p(math.exp(-(0.5 * 1.0 - 0.1 * -2.0)))
    torch.testing.assert_close(obj.loss(policy, reference, {}).losses, tensor([expected]))
    perm = torch.tensor([0, 3, 1, 2])
    permuted = obj.loss(SequenceStats(policy.logps[:, perm], policy.lengths[:, perm]), SequenceStats(reference.logps[:, perm], reference.lengths[:, perm]), {})
    torch.testing.assert_close(permuted.losses, tensor([expected]))


def test_mask_averages_valid_samples_only():
    rho = tensor([[-2.0, 1.0, 3.0, float("nan")]])
    policy, reference = ratio_stats(rho)
    out = build_objective("d2o", beta=0.5, alpha=0.1).loss(policy, reference, {"mask": torch.tensor([[True, True, True, False]])})
    expected = math.log1p(math.exp(-(0.5 * 2.0 - 0.1 * -2.0)))
    torch.testing.assert_close(out.losses, tensor([expected]))
    with pytest.raises(ValueError, match="mask"):
        build_objective("d2o").loss(policy, reference, {"mask": torch.tensor([[False, True, True, True]])})
