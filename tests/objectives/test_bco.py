import math

import pytest
import torch

from framework.objectives import build_objective
from framework.objectives.bco import density_ratio_weights, fit_udm_classifier

from .helpers import LOG2, ratio_stats, tensor


def _run(obj, rho, labels, **extra):
    policy, reference = ratio_stats(tensor(rho).reshape(-1, 1))
    return obj.loss(policy, reference, {"labels": torch.tensor(labels), **extra})


def test_terms_are_log2_at_the_shift():
    obj = build_objective("bco", beta=0.5)
    out = _run(obj, [2.0, 2.0], [True, False])  # batch mean reward 1.0 → δ = 1.0 on the first step
    assert obj.delta == pytest.approx(1.0)
    torch.testing.assert_close(out.losses, tensor([LOG2, LOG2]))
    torch.testing.assert_close(out.metrics["delta"], torch.tensor(1.0, dtype=torch.float64))


def test_running_mean_over_steps_and_sync():
    obj = build_objective("bco", beta=1.0)
    for rewards in ([1.0, 3.0], [5.0, 5.0], [0.0, -3.0]):
        _run(obj, rewards, [True, False])
    assert obj.delta == pytest.approx((2.0 + 5.0 - 1.5) / 3)
    seen = []
    # Another rank contributes two rewards summing to 38: the all-rank sums [Σ w·r, Σ w] decide the update.
    obj.sync_sum = lambda t: (seen.append(t.clone()), t + tensor([38.0, 2.0]))[1]
    _run(obj, [0.0, 0.0], [True, False])
    torch.testing.assert_close(seen[0], tensor([0.0, 2.0]))
    assert obj.delta == pytest.approx((4.0 + 10.0 - 3.0 + 38.0) / 10)


def test_delta_is_the_count_weighted_mean_of_real_rewards():
    obj = build_objective("bco", beta=1.0)
    _run(obj, [1.0, 3.0, 100.0], [True, False, True], weights=tensor([1.0, 1.0, 0.0]))  # last row is padding
    assert obj.delta == pytest.approx(2.0)
    _run(obj, [6.0], [True])  # a smaller call weighs by its count, not as one step
    assert obj.delta == pytest.approx((1.0 + 3.0 + 6.0) / 3)
    _run(obj, [50.0, 50.0], [True, False], weights=tensor([0.0, 0.0]))  # all padding: δ unchanged
    assert obj.delta == pytest.approx(10.0 / 3)
    _run(obj, [float("nan"), 1.0], [True, False])  # a non-finite micro-batch, skipped by the trainer, neither
    assert obj.state_dict() == {"delta": pytest.approx(10.0 / 3), "count": 3.0}


def test_old_checkpoint_state_loads_with_its_step_count_as_weight():
    obj = build_objective("bco", beta=1.0)
    obj.load_state_dict({"delta": 2.0, "steps": 3})
    _run(obj, [6.0], [True])
    assert obj.delta == pytest.approx((3 * 2.0 + 6.0) / 4)
    assert obj.state_dict() == {"delta": pytest.approx(3.0), "count": 4.0}


def test_constant_shift_is_absorbed_once_delta_tracked_it():
    c = 7.5
    base, shifted = build_objective("bco", beta=1.0), build_objective("bco", beta=1.0)
    shifted.load_state_dict({"delta": c, "steps": 0})
    rewards = [0.3, -1.2, 2.0, 0.1]
    for _ in range(3):
        a = _run(base, rewards, [True, False, True, False])
        b = _run(shifted, [r + c for r in rewards], [True, False, True, False])
    torch.testing.assert_close(a.losses, b.losses)


def test_hand_value_and_udm_weights_on_undesirable_only():
    obj = build_objective("bco", beta=1.0)
    obj.load_state_dict({"delta": 0.5, "steps": 10**9})  # huge count: δ effectively frozen
    out = _run(obj, [1.5, 1.5], [True, False], udm_weights=tensor([3.0, 2.0]))
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    torch.testing.assert_close(out.losses, tensor([sp(-1.0), 2.0 * sp(1.0)]), rtol=1e-8, atol=1e-8)


def test_state_dict_round_trip_and_eval_mode():
    obj = build_objective("bco")
    _run(obj, [4.0, -1.0], [True, False])
    state = obj.state_dict()
    clone = build_objective("bco")
    clone.load_state_dict(state)
    assert clone.state_dict() == state
    clone.train(False)
    _run(clone, [100.0, 100.0], [True, False])
    assert clone.state_dict() == state


def test_udm_classifier_recovers_gaussian_density_ratio():
    gen = torch.Generator().manual_seed(0)
    dim, shift = 3, torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    desirable = torch.randn(4000, dim, generator=gen, dtype=torch.float64) + shift
    undesirable = torch.randn(1000, dim, generator=gen, dtype=torch.float64)  # imbalanced on purpose
    classifier = fit_udm_classifier(desirable, undesirable, l2=1e-6)
    # For N(μ, I) versus N(0, I): log p_D(x)/p_U(x) = μ·x − |μ|²/2, linear, so balanced LR recovers it.
    probe = torch.randn(200, dim, generator=gen, dtype=torch.float64)
    true_log_ratio = probe @ shift - shift.dot(shift) / 2
    assert (classifier.logits(probe) - true_log_ratio).abs().max() < 0.25
    assert 0.6 < classifier.accuracy(desirable, undesirable) < 0.8
    weights = density_ratio_weights(classifier, probe * 5, min_ratio=0.5, max_ratio=10.0)
    assert weights.min() == 0.5 and weights.max() == 10.0
    unclipped = density_ratio_weights(classifier, probe, min_ratio=1e-9, max_ratio=1e9)
    p = classifier.probabilities(probe)
    torch.testing.assert_close(unclipped, p / (1 - p))


def test_udm_input_validation():
    with pytest.raises(ValueError, match="each class"):
        fit_udm_classifier(torch.zeros(0, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="min_ratio"):
        density_ratio_weights(fit_udm_classifier(torch.randn(5, 2), torch.randn(5, 2)), torch.randn(2, 2), min_ratio=2.0, max_ratio=1.0)
