"""Builders of float64 SequenceStats for the objective tests."""

from __future__ import annotations

import math
from typing import Optional

import torch

from framework.objectives import SequenceStats

LOG2 = math.log(2.0)
DTYPE = torch.float64


def tensor(values, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=DTYPE, requires_grad=requires_grad)


def stats(logps, lengths=None, **extra) -> SequenceStats:
    """SequenceStats from nested lists or tensors; lengths default to 1 (so means equal sums)."""
    logps = logps if isinstance(logps, torch.Tensor) else tensor(logps)
    lengths = torch.ones_like(logps) if lengths is None else torch.as_tensor(lengths, dtype=DTYPE)
    return SequenceStats(logps, lengths, **extra)


def ratio_stats(rho: torch.Tensor, lengths: Optional[torch.Tensor] = None):
    """(policy, reference) whose log-ratios are exactly `rho`: reference log-probs random, policy = ref + rho."""
    gen = torch.Generator().manual_seed(1234)
    ref = -torch.rand(rho.shape, generator=gen, dtype=DTYPE) * 50
    return stats(ref + rho, lengths), stats(ref, lengths)


def random_stats(batch: int, k: int, seed: int = 0, requires_grad: bool = True):
    """Random policy/reference stats with realistic sums and lengths; policy logps is a leaf with grad."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (batch, k), generator=gen).to(DTYPE)
    ref = -torch.rand(batch, k, generator=gen, dtype=DTYPE) * lengths * 2
    pol = (ref + torch.randn(batch, k, generator=gen, dtype=DTYPE) * 3).requires_grad_(requires_grad)
    return SequenceStats(pol, lengths), SequenceStats(ref, lengths)


def grad_of(loss: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss.sum(), wrt, retain_graph=True)
    return g
