import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import LOG2, ratio_stats, tensor

sp = lambda z: math.log1p(math.exp(z))  # noqa: E731


def _run(obj, h, **batch):
    """SPA on pairs with DPO margins h = ρ_w − ρ_l (ρ_l = 0)."""
    policy, reference = ratio_stats(torch.stack([tensor(h), torch.zeros(len(h), dtype=torch.float64)], -1))
    return obj.loss(policy, reference, batch)


def test_alpha_zero_is_dpo():
    policy, reference = ratio_stats(tensor([[2.0, -1.0], [0.3, 0.9], [-4.0, 1.0]]))
    spa = build_objective("spa", beta=0.5, alpha=0.0).loss(policy, reference, {})
    dpo = build_objective("dpo", beta=0.5).loss(policy, reference, {})
    torch.testing.assert_close(spa.losses, dpo.losses)


def test_policy_equals_reference_gives_log2():
    out = _run(build_objective("spa"), [0.0, 0.0])
    torch.testing.assert_close(out.losses, tensor([LOG2, LOG2]))


def test_low_confidence_pairs_are_label_smoothed_confident_ones_are_dpo():
    obj = build_objective("spa", beta=1.0, alpha=0.25, percentile=50.0, buffer_size=4, extrapolation=0.0)
    out = _run(obj, [-1.0, 1.0, 2.0, 3.0])  # τ_50 of the buffer [-1, 1, 2, 3] = 1.5
    assert obj.threshold == pytest.approx(1.5)
    torch.testing.assert_close(out.metrics["spa/confident"], tensor([0.0, 0.0, 1.0, 1.0]))
    smoothed = lambda h: 0.75 * sp(-h) + 0.25 * sp(h)  # noqa: E731
    torch.testing.assert_close(out.losses, tensor([smoothed(-1.0), smoothed(1.0), sp(-2.0), sp(-3.0)]))


def test_threshold_is_the_percentile_of_the_last_margins_extrapolated():
    obj = build_objective("spa", beta=0.5, percentile=10.0, buffer_size=5, extrapolation=1.0)
    _run(obj, [1.0, 2.0, 3.0])
    _run(obj, [4.0, 5.0, 6.0])  # buffer keeps the last 5 of m_g = β(1+λ)h = h: [2, 3, 4, 5, 6]
    assert obj.state_dict() == {"margins": [2.0, 3.0, 4.0, 5.0, 6.0]}
    assert obj.threshold == pytest.approx(2.4)  # linear interpolation, like numpy.percentile


def test_extrapolation_does_not_change_confidence_within_a_run():
    outs = []
    for lam in (0.125, 0.5):
        obj = build_objective("spa", alpha=0.1, extrapolation=lam)
        for h in ([0.5, -2.0, 3.0, 1.0], [2.5, -0.5, 0.1, 4.0]):
            outs.append(_run(obj, h))
    torch.testing.assert_close(outs[1].losses, outs[3].losses)
    torch.testing.assert_close(outs[1].metrics["spa/confident"], outs[3].metrics["spa/confident"])


def test_padding_rows_and_other_ranks_feed_the_buffer_in_rank_order():
    obj = build_objective("spa", beta=1.0, buffer_size=10, extrapolation=0.0)
    seen = []
    # Another rank sends [[7, w=1], [8, w=0]]: gathered after this rank's rows (this rank is rank 0).
    obj.sync_gather = lambda t: (seen.append(t.clone()), torch.cat([t, tensor([[7.0, 1.0], [8.0, 0.0]])]))[1]
    _run(obj, [1.0, 100.0], weights=tensor([1.0, 0.0]))
    assert seen[0].shape == (2, 2)
    assert obj.state_dict() == {"margins": [1.0, 7.0]}


def test_alpha_schedule_by_step():
    obj = build_objective("spa", beta=1.0, alpha=0.5, percentile=100.0, extrapolation=0.0)
    obj.load_state_dict({"margins": [10.0]})  # τ = 10 is above every margin below: all pairs low-confidence
    for step, alpha in ((0, 0.0), (1, 0.0), (2, 0.5), (9, 0.5)):
        obj.set_step(step, 10)  # warm-up 20% of 10 steps: steps 0 and 1
        out = _run(obj, [1.0])
        assert float(out.metrics["spa/alpha"]) == alpha
        torch.testing.assert_close(out.losses, tensor([(1 - alpha) * sp(-1.0) + alpha * sp(1.0)]))


def test_state_round_trip_resumes_exactly_and_eval_freezes_the_buffer():
    first, batches = build_objective("spa", buffer_size=6), ([0.3, -1.0, 2.0], [1.5, 0.2, -0.4], [0.9, 3.0, -2.0])
    _run(first, batches[0])
    resumed = build_objective("spa", buffer_size=6)
    resumed.load_state_dict(first.state_dict())
    for h in batches[1:]:
        torch.testing.assert_close(_run(first, h).losses, _run(resumed, h).losses)
    assert first.state_dict() == resumed.state_dict()
    frozen = first.state_dict()
    first.train(False)
    _run(first, [50.0, 60.0])
    assert first.state_dict() == frozen


def test_empty_buffer_in_eval_counts_every_pair_confident():
    obj = build_objective("spa", beta=1.0, alpha=0.3).train(False)
    out = _run(obj, [-1.0, 2.0])
    torch.testing.assert_close(out.losses, tensor([sp(1.0), sp(-2.0)]))
    assert math.isnan(float(out.metrics["spa/threshold"]))


@pytest.mark.parametrize("bad", [{"alpha": 0.6}, {"percentile": 101.0}, {"beta": 0.0}, {"alpha_warmup": 1.5}])
def test_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match="spa"):
        build_objective("spa", **bad)
