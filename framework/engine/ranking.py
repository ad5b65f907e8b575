"""Evaluation metrics over per-response scores (log-probs, implicit rewards, reward-model scores): pure torch.

Conventions: a pair is (chosen, rejected) with the chosen response first; a margin is chosen − rejected; an
accuracy counts margin > 0 (ties count as wrong, as in Chen et al. 2024, arXiv 2405.19534).

Idealized ranking accuracy (Chen et al., Thm 3.1): a policy at the exact optimum of the DPO objective with
reference π_ref and strength β satisfies π*(y_w)/π*(y_l) = π_ref(y_w)/π_ref(y_l) · (α/(1−α))^{1/β}, with α the
true probability that y_w is preferred. It ranks the pair correctly iff
log π_ref(y_w) − log π_ref(y_l) + logit(α)/β > 0. α is not observed for a pair with a single label: when the pair
carries scores, α = σ(score_w − score_l) (a Bradley–Terry reading of the scores); otherwise a constant α
(`DEFAULT_ALPHA`, `alignray eval --alpha`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

DEFAULT_ALPHA = 0.9
DEFAULT_BETA = 0.1


def accuracy(margins: torch.Tensor) -> float:
    """Share of margins > 0 (NaN for no pairs)."""
    return float((margins > 0).double().mean()) if margins.numel() else float("nan")


def pair_alpha(chosen_scores: Optional[torch.Tensor], rejected_scores: Optional[torch.Tensor], count: int,
               default: float = DEFAULT_ALPHA) -> torch.Tensor:
    """[N] stand-ins for the true preference probability α: σ(score gap) where both scores are known, else
    `default`."""
    alpha = torch.full((count,), float(default), dtype=torch.float64)
    if chosen_scores is not None and rejected_scores is not None:
        gap = (chosen_scores.double() - rejected_scores.double())
        known = ~torch.isnan(gap)
        alpha[known] = torch.sigmoid(gap[known])
    return alpha


def idealized_margins(reference_margins: torch.Tensor, alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """log π*(y_w) − log π*(y_l) at the DPO optimum: the reference margin plus logit(α)/β."""
    alpha = alpha.double().clamp(1e-12, 1 - 1e-12)
    return reference_margins.double() + torch.logit(alpha) / beta


def idealized_ranking_accuracy(reference_margins: torch.Tensor, alpha: torch.Tensor, beta: float) -> float:
    """Chen et al.'s idealized ranking accuracy: the share of pairs the DPO optimum ranks correctly."""
    return accuracy(idealized_margins(reference_margins, alpha, beta))


def spread(values: torch.Tensor) -> Dict[str, float]:
    """Mean, standard deviation and 10/50/90 % quantiles."""
    if not values.numel():
        return {}
    values = values.double()
    q = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "p10": q[0], "p50": q[1], "p90": q[2]}


def wilson_interval(successes: float, total: float, z: float = 1.96) -> list:
    """Wilson score interval of a proportion ([nan, nan] for no trials)."""
    if total <= 0:
        return [float("nan"), float("nan")]
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_interval(values: torch.Tensor, level: float = 0.95, draws: int = 2000, seed: int = 0) -> list:
    """Percentile bootstrap interval of the mean of `values`."""
    if not values.numel():
        return [float("nan"), float("nan")]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, values.numel(), (draws, values.numel()), generator=generator)
    means = values.double()[picks].mean(-1)
    tail = (1 - level) / 2
    return torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()


def kendall_tau(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Kendall τ-b between two score vectors of one list (NaN when either is constant)."""
    i, j = torch.triu_indices(len(truth), len(truth), offset=1)
    a, b = torch.sign(predicted[i] - predicted[j]), torch.sign(truth[i] - truth[j])
    denominator = math.sqrt(float((a != 0).sum()) * float((b != 0).sum()))
    return float((a * b).sum()) / denominator if denominator else float("nan")


def ndcg(predicted: torch.Tensor, relevance: torch.Tensor) -> float:
    """NDCG of the order `predicted` puts a list in, gains = relevance shifted to start at 0."""
    gains = relevance.double() - relevance.double().min()
    discounts = 1.0 / torch.log2(torch.arange(len(gains), dtype=torch.float64) + 2)
    ideal = float((gains.sort(descending=True).values * discounts).sum())
    if ideal == 0:
        return float("nan")
    return float((gains[predicted.argsort(descending=True, stable=True)] * discounts).sum()) / ideal


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a desirable example > an undesirable one's), ties counted half (NaN without both classes)."""
    positive, negative = scores[labels.bool()].double(), scores[~labels.bool()].double()
    if not positive.numel() or not negative.numel():
        return float("nan")
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def pairwise_metrics(policy: torch.Tensor, lengths: torch.Tensor, reference: Optional[torch.Tensor], beta: float,
                     alpha: torch.Tensor) -> Dict[str, object]:
    """The stable pairwise keys from [N, 2] summed log-probs (chosen first), [N, 2] response token counts and,
    optionally, [N, 2] reference log-probs."""
    margin = policy[:, 0].double() - policy[:, 1].double()
    per_token = policy.double() / lengths.double().clamp(min=1)
    mean_margin = per_token[:, 0] - per_token[:, 1]
    n = len(margin)
    out: Dict[str, object] = {
        "pairs": n,
        "ranking_accuracy": accuracy(margin),
        "ranking_accuracy_ci": wilson_interval(float((margin > 0).sum()), n),
        "ranking_accuracy_mean": accuracy(mean_margin),
        "mean_margin": spread(margin).get("mean", float("nan")),
        "margin_spread": spread(margin),
        "mean_margin_per_token": spread(mean_margin).get("mean", float("nan")),
    }
    if reference is not None:
        ref_margin = reference[:, 0].double() - reference[:, 1].double()
        reward_margin = beta * (margin - ref_margin)  # implicit reward β·(log π − log π_ref), chosen − rejected
        out.update({
            "reward_accuracy": accuracy(reward_margin),
            "reward_accuracy_ci": wilson_interval(float((reward_margin > 0).sum()), n),
            "reference_ranking_accuracy": accuracy(ref_margin),
            "idealized_ranking_accuracy": idealized_ranking_accuracy(ref_margin, alpha, beta),
            "mean_reward_margin": spread(reward_margin).get("mean", float("nan")),
            "reward_margin_spread": spread(reward_margin),
        })
    return out


def listwise_metrics(policy: Sequence[torch.Tensor], scores: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Mean Kendall τ and NDCG of the model's order (summed log-probs) against each list's scores, and the
    share of lists the model orders exactly."""
    taus = [kendall_tau(p, s) for p, s in zip(policy, scores)]
    gains = [ndcg(p, s) for p, s in zip(policy, scores)]
    exact = [float(t == 1.0) for t in taus if not math.isnan(t)]
    return {"lists": len(taus), "kendall_tau": _nanmean(taus), "ndcg": _nanmean(gains),
            "exact_order_accuracy": _nanmean(exact)}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def win_rate(policy_rewards: torch.Tensor, reference_rewards: torch.Tensor) -> Dict[str, object]:
    """Judge comparison on the same prompts: mean rewards and the policy's win rate (ties count half) with
    a bootstrap 95 % interval."""
    wins = (policy_rewards > reference_rewards).double() + 0.5 * (policy_rewards == reference_rewards).double()
    return {"prompts": int(wins.numel()), "win_rate": float(wins.mean()) if wins.numel() else float("nan"),
            "win_rate_ci": bootstrap_interval(wins), "mean_reward": float(policy_rewards.double().mean()),
            "reference_mean_reward": float(reference_rewards.double().mean())}
