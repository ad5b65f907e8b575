"""EpochSampler: equal disjoint shares, every row exactly once per epoch, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from framework.store.errors import StoreError

from framework.store import EpochSampler


def world(num_rows: int, world_size: int, batch_size: int, **kwargs) -> list:
    return [EpochSampler(num_rows, rank=r, world_size=world_size, batch_size=batch_size, seed=7, **kwargs)
            for r in range(world_size)]


@pytest.mark.parametrize("num_rows,world_size,batch_size", [(103, 2, 4), (8, 2, 4), (5, 4, 3), (1, 2, 1), (64, 1, 8)])
@pytest.mark.parametrize("grouped", [False, True])
def test_equal_disjoint_shares_cover_every_row_exactly_once(num_rows, world_size, batch_size, grouped):
    lengths = np.random.default_rng(0).integers(1, 500, num_rows) if grouped else None
    samplers = world(num_rows, world_size, batch_size, lengths=lengths, group_steps=2)
    for epoch in range(2):
        plans = [s.plan(epoch) for s in samplers]
        assert len({len(p) for p in plans}) == 1  # same number of steps on every rank
        assert all(len(b.indices) == batch_size for p in plans for b in p)  # same micro-batch size
        real = [i for p in plans for b in p for i, pad in zip(b.indices, b.is_padding) if not pad]
        assert sorted(real) == list(range(num_rows))  # exactly once across ranks (so disjoint)
        padding = sum(pad for p in plans for b in p for pad in b.is_padding)
        assert padding == samplers[0].padding_per_epoch < world_size * batch_size


def test_epochs_are_shuffled_differently_and_reproducibly():
    a, b = world(50, 1, 5)[0], world(50, 1, 5)[0]
    assert a.batches(0) == b.batches(0) and a.batches(0) != a.batches(1)
    assert EpochSampler(50, rank=0, world_size=1, batch_size=5, seed=7, shuffle=False).batches(0)[0] == [0, 1, 2, 3, 4]


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(1).integers(10, 1000, 4096)

    def padded_tokens(sampler):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in map(np.array, sampler.batches(0)))

    plain = EpochSampler(4096, rank=0, world_size=2, batch_size=8, seed=3)
    grouped = EpochSampler(4096, rank=0, world_size=2, batch_size=8, seed=3, lengths=lengths)
    assert padded_tokens(grouped) < 0.1 * padded_tokens(plain)


@pytest.mark.parametrize("stop_after", [0, 1, 6, 13, 14, 27])
def test_resume_neither_skips_nor_repeats(stop_after):
    # 103 rows, 2 ranks, batch 4: 13 steps per epoch with 1 padding slot, not a multiple of the batch size.
    def run(sampler, steps):
        return [b for _, b in zip(range(steps), sampler.iter_batches(epochs=3))]

    reference = [b for b in world(103, 2, 4)[1].iter_batches(epochs=3)]
    first = world(103, 2, 4)[1]
    head = run(first, stop_after)
    state = first.state_dict()
    resumed = world(103, 2, 4)[1]
    resumed.load_state_dict(state)
    tail = list(resumed.iter_batches(epochs=3))
    assert head + tail == reference and len(reference) == 3 * 13


def test_state_from_another_setup_is_refused():
    state = world(103, 2, 4)[0].state_dict()
    with pytest.raises(StoreError, match="world_size"):
        EpochSampler(103, rank=0, world_size=4, batch_size=4, seed=7).load_state_dict(state)
