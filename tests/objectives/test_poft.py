import math

import pytest
import torch

from framework.objectives import SequenceStats, build_objective

from .helpers import LOG2, grad_of, stats, tensor


def _policy_from_logits(logits, labels):
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return SequenceStats(token_logps.sum(1, keepdim=True), torch.full((logits.shape[0], 1), float(labels.shape[1]), dtype=logits.dtype))


def test_aligned_equal_policy_gives_log2_and_half_the_ce_gradient():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    policy = _policy_from_logits(logits, labels)
    aligned = policy.mean_logps.detach().expand(-1, 3)
    out = build_objective("poft").loss(policy, None, {"aligned_logps": aligned})
    torch.testing.assert_close(out.losses, torch.full((2,), LOG2, dtype=torch.float64))
    ce = -policy.mean_logps[:, 0]
    torch.testing.assert_close(grad_of(out.losses, logits), 0.5 * grad_of(ce, logits))


def test_gradient_is_tau_times_ce_gradient():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (3, 4), generator=gen)
    aligned = tensor([[-1.0, -2.0], [-0.5, -3.5], [-4.0, -1.0]])
    policy = _policy_from_logits(logits, labels)
    out = build_objective("poft").loss(policy, None, {"aligned_logps": aligned})
    tau = out.metrics["tau"]
    torch.testing.assert_close(tau, torch.sigmoid(aligned.mean(1) - policy.mean_logps[:, 0].detach()))
    for b in range(3):
        torch.testing.assert_close(grad_of(out.losses[b], logits), tau[b] * grad_of(-policy.mean_logps[b, 0], logits))


def test_raising_aligned_logps_raises_tau():
    policy = stats([[-6.0]], [[3]])
    taus = [float(build_objective("poft").loss(policy, None, {"aligned_logps": tensor([[a, a - 1]])}).metrics["tau"]) for a in (-5.0, -2.0, 0.0)]
    assert taus == sorted(taus) and len(set(taus)) == 3
    expected = 1 / (1 + math.exp(-(-2.5 - -2.0)))
    assert float(build_objective("poft").loss(policy, None, {"aligned_logps": tensor([[-2.0, -3.0]])}).metrics["tau"]) == pytest.approx(expected)


def test_requires_aligned_logps():
    assert build_objective("poft").requires == ("aligned_logps",)
    with pytest.raises(KeyError, match="aligned_logps"):
        build_objective("poft").loss(stats([[-1.0]]), None, {})
