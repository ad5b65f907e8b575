"""The evaluation metrics on hand-computed numbers (framework/engine/ranking.py)."""

from __future__ import annotations

import math

import pytest
import torch

from framework.engine import ranking


def test_idealized_ranking_accuracy_matches_a_hand_computation():
    # log π_ref(y_w) − log π_ref(y_l) per pair, α = true P(y_w ≻ y_l), β = 0.5 → logit(α)/β by hand:
    # pair 1: −1.0 + ln(0.9/0.1)/0.5 = −1.0 + 4.394 = +3.394 → correct
    # pair 2: −5.0 + 4.394 = −0.606 → wrong
    # pair 3: +0.2 + ln(0.4/0.6)/0.5 = 0.2 − 0.811 = −0.611 → wrong (the labellers mostly prefer y_l)
    # pair 4: −0.3 + ln(0.6/0.4)/0.5 = −0.3 + 0.811 = +0.511 → correct
    reference_margins = torch.tensor([-1.0, -5.0, 0.2, -0.3])
    alpha = torch.tensor([0.9, 0.9, 0.4, 0.6])
    expected = [-1.0 + 2 * math.log(9), -5.0 + 2 * math.log(9), 0.2 + 2 * math.log(0.4 / 0.6), -0.3 + 2 * math.log(1.5)]
    margins = ranking.idealized_margins(reference_margins, alpha, beta=0.5)
    assert margins.tolist() == pytest.approx(expected)
    assert ranking.idealized_ranking_accuracy(reference_margins, alpha, beta=0.5) == 0.5
    # A stronger β keeps the optimum near the reference: only pair 3 (0.2 − 0.041 > 0) puts y_w first.
    assert ranking.idealized_ranking_accuracy(reference_margins, alpha, beta=10.0) == 0.25


def test_pairwise_metrics_keys_and_values():
    policy = torch.tensor([[-10.0, -12.0], [-8.0, -6.0], [-20.0, -30.0]])  # margins 2, −2, 10
    lengths = torch.tensor([[2.0, 4.0], [2.0, 1.0], [10.0, 5.0]])  # per-token: −5 vs −3, −4 vs −6, −2 vs −6
    reference = torch.tensor([[-11.0, -11.0], [-9.0, -6.0], [-20.0, -25.0]])  # ref margins 0, −3, 5
    out = ranking.pairwise_metrics(policy, lengths, reference, beta=0.1, alpha=torch.full((3,), 0.9))
    assert out["pairs"] == 3
    assert out["ranking_accuracy"] == pytest.approx(2 / 3)
    assert out["ranking_accuracy_mean"] == pytest.approx(2 / 3)  # pair 1 flips to wrong, pair 2 to right
    assert out["mean_margin"] == pytest.approx(10 / 3)
    # implicit reward margins 0.1·(2 − 0), 0.1·(−2 + 3), 0.1·(10 − 5) → all > 0
    assert out["reward_accuracy"] == 1.0 and out["mean_reward_margin"] == pytest.approx((0.2 + 0.1 + 0.5) / 3)
    assert out["reference_ranking_accuracy"] == pytest.approx(1 / 3)
    assert out["idealized_ranking_accuracy"] == 1.0  # logit(0.9)/0.1 ≈ 22 outweighs every reference margin
    low, high = out["ranking_accuracy_ci"]
    assert low < 2 / 3 < high
    assert "reward_accuracy" not in ranking.pairwise_metrics(policy, lengths, None, 0.1, torch.full((3,), 0.9))


def test_alpha_from_scores_else_the_default():
    alpha = ranking.pair_alpha(torch.tensor([2.0, float("nan")]), torch.tensor([1.0, 0.0]), 2, default=0.8)
    assert alpha.tolist() == pytest.approx([1 / (1 + math.exp(-1.0)), 0.8])
    assert ranking.pair_alpha(None, None, 3).tolist() == [ranking.DEFAULT_ALPHA] * 3


def test_kendall_tau_ndcg_and_auc_by_hand():
    truth = torch.tensor([3.0, 2.0, 1.0])
    assert ranking.kendall_tau(torch.tensor([0.3, 0.2, 0.1]), truth) == 1.0
    assert ranking.kendall_tau(torch.tensor([0.1, 0.2, 0.3]), truth) == -1.0
    assert ranking.kendall_tau(torch.tensor([0.2, 0.3, 0.1]), truth) == pytest.approx(1 / 3)  # 2 concordant, 1 not
    # gains (relevance − min) 2, 1, 0; the model orders items 1, 0, 2: DCG = 1 + 2/log2(3); ideal = 2 + 1/log2(3)
    ndcg = ranking.ndcg(torch.tensor([0.2, 0.3, 0.1]), truth)
    assert ndcg == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ranking.ndcg(truth, truth) == 1.0
    scores, labels = torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([True, True, False, False])
    # positive×negative pairs: (0.9,0.5) win, (0.9,0.1) win, (0.5,0.5) tie, (0.5,0.1) win → 3.5 / 4
    assert ranking.auc(scores, labels) == pytest.approx(3.5 / 4)
    assert math.isnan(ranking.auc(scores, torch.ones(4, dtype=torch.bool)))
    lists = ranking.listwise_metrics([torch.tensor([0.3, 0.2, 0.1]), torch.tensor([0.1, 0.2, 0.3])], [truth, truth])
    assert lists["kendall_tau"] == 0.0 and lists["exact_order_accuracy"] == 0.5 and lists["lists"] == 2


def test_intervals_and_win_rate():
    low, high = ranking.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)  # textbook values
    assert all(math.isnan(v) for v in ranking.wilson_interval(0, 0))
    out = ranking.win_rate(torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 2.0, 1.0, 4.0]))
    assert out["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4) and out["prompts"] == 4
    assert out["mean_reward"] == 2.0 and out["reference_mean_reward"] == 1.75
    low, high = out["win_rate_ci"]
    assert 0 <= low <= out["win_rate"] <= high <= 1
    spread = ranking.spread(torch.arange(11, dtype=torch.float64))
    assert spread["mean"] == 5.0 and spread["p10"] == 1.0 and spread["p50"] == 5.0 and spread["p90"] == 9.0


def test_eval_metrics_over_store_rows_by_hand():
    """`alignray eval`'s reduction of scored rows: which pairs count, α from scores, per objective, binary AUC."""
    from framework.cluster.evaluate import metrics

    rows = [
        {"kind": "pairwise", "scores": None, "logps": [-1.0, -2.0], "lengths": [1, 1], "ref_logps": [-1.5, -1.0]},
        {"kind": "pairwise", "scores": [2.0, 1.0], "logps": [-3.0, -2.0], "lengths": [1, 1], "ref_logps": [-1.0, -0.5]},
        # a list of 3 → 3 pairs, higher score first: (1, 2), (1, 0), (2, 0); the model orders it exactly backwards
        {"kind": "ranked", "scores": [1.0, 3.0, 2.0], "logps": [-1.0, -3.0, -2.0], "lengths": [1, 1, 1],
         "ref_logps": [0.0, 0.0, 0.0]},
        {"kind": "multi", "scores": [1.0, 0.0], "objective_names": ["a", "b"], "objective_scores": [[1.0, 0.0], [0.0, 1.0]],
         "logps": [-1.0, -2.0], "lengths": [1, 1], "ref_logps": [0.0, 0.0]},
        {"kind": "binary", "label": True, "scores": None, "logps": [-1.0], "lengths": [1], "ref_logps": [-2.0]},
        {"kind": "binary", "label": False, "scores": None, "logps": [-3.0], "lengths": [1], "ref_logps": [-2.0]},
    ]
    out = metrics(rows, beta=1.0, alpha=0.6)
    assert out["pairs"] == 6 and out["ranking_accuracy"] == pytest.approx(2 / 6)
    # idealized, β = 1: row 1 −0.5 + logit(0.6) = −0.095 ✗; row 2 (α = σ(2 − 1)) −0.5 + 1 ✓; list pairs α = σ(1),
    # σ(2), σ(1) over a zero reference margin ✓✓✓; the multi row −0 + logit(0.6) ✓ → 5 / 6
    assert out["idealized_ranking_accuracy"] == pytest.approx(5 / 6)
    assert out["objectives"]["a"]["ranking_accuracy"] == 1.0 and out["objectives"]["b"]["ranking_accuracy"] == 0.0
    assert out["listwise"] == {"lists": 1, "kendall_tau": -1.0, "ndcg": pytest.approx(out["listwise"]["ndcg"]),
                               "exact_order_accuracy": 0.0}
    assert out["binary"] == {"examples": 2, "desirable": 1, "auc": 1.0, "auc_mean": 1.0, "reward_auc": 1.0}
    with pytest.raises(Exception, match="no usable rows"):
        metrics([{"kind": "ranked", "scores": [1.0, 1.0], "logps": [-1.0, -2.0], "lengths": [1, 1]}], 0.1, 0.9)
