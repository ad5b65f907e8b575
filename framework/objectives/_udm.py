"""Underlying distribution matching for BCO (Jung et al. 2024, arXiv 2404.04656), data side, torch only.

A logistic-regression classifier on frozen prompt embeddings separates desirable (1) from undesirable (0)
prompts with balanced class weights. Its odds p/(1 − p) estimate the density ratio of desirable to
undesirable prompts, clipped to [0.5, 10] and used as per-example weights of BCO's undesirable term.
The objective only reads the weights (batch["udm_weights"]); fitting happens when the data is prepared.
"""

from __future__ import annotations

import dataclasses

import torch

Tensor = torch.Tensor


@dataclasses.dataclass
class UDMClassifier:
    """A fitted logistic regression on standardised embeddings: logit(x) = ((x − mean)/scale)·weight + bias."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    scale: Tensor

    def logits(self, embeddings: Tensor) -> Tensor:
        features = (embeddings.to(self.weight) - self.mean) / self.scale
        return features @ self.weight + self.bias

    def probabilities(self, embeddings: Tensor) -> Tensor:
        """P(desirable | x)."""
        return torch.sigmoid(self.logits(embeddings))

    def accuracy(self, desirable: Tensor, undesirable: Tensor) -> float:
        """Balanced accuracy (mean of the two per-class accuracies), the BCO log's classifier accuracy."""
        hits_d = (self.logits(desirable) > 0).double().mean()
        hits_u = (self.logits(undesirable) <= 0).double().mean()
        return float((hits_d + hits_u) / 2)


def fit_udm_classifier(desirable: Tensor, undesirable: Tensor, l2: float = 1e-3, max_iter: int = 100, tol: float = 1e-10) -> UDMClassifier:
    """Fit the balanced logistic regression by Newton's method in float64.

    desirable, undesirable: [N_d, D] and [N_u, D] prompt embeddings (BCO samples 1024 prompts per class).
    l2: ridge penalty on the (standardised) weights, which keeps the fit finite on separable data.
    """
    if desirable.dim() != 2 or undesirable.dim() != 2 or desirable.shape[1] != undesirable.shape[1]:
        raise ValueError(f"embeddings must be [N, D] with equal D, got {tuple(desirable.shape)} and {tuple(undesirable.shape)}")
    if len(desirable) == 0 or len(undesirable) == 0:
        raise ValueError("fit_udm_classifier needs at least one prompt of each class")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x = torch.cat([desirable, undesirable]).double()
    y = torch.cat([torch.ones(len(desirable)), torch.zeros(len(undesirable))]).double()
    # Balanced class weights: each class contributes half of the objective whatever its size.
    sample_weight = torch.where(y > 0, 0.5 / len(desirable), 0.5 / len(undesirable)).double()
    mean, scale = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-12)
    design = torch.cat([(x - mean) / scale, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    penalty = torch.full((design.shape[1],), l2, dtype=x.dtype)
    penalty[-1] = 0.0  # the bias is not penalised
    theta = torch.zeros(design.shape[1], dtype=x.dtype)
    for _ in range(max_iter):
        p = torch.sigmoid(design @ theta)
        gradient = design.T @ (sample_weight * (p - y)) + penalty * theta
        hessian = (design.T * (sample_weight * p * (1 - p))) @ design + torch.diag(penalty)
        step = torch.linalg.solve(hessian, gradient)
        theta = theta - step
        if step.abs().max() < tol:
            break
    return UDMClassifier(weight=theta[:-1], bias=theta[-1], mean=mean, scale=scale)


def density_ratio_weights(classifier: UDMClassifier, embeddings: Tensor, min_ratio: float = 0.5, max_ratio: float = 10.0) -> Tensor:
    """w(x) = clip(p/(1 − p), min_ratio, max_ratio) per prompt; p/(1 − p) = exp(logit), computed stably.

    The clamp is essential: as p → 1 the ratio explodes.
    """
    if not 0 < min_ratio <= max_ratio:
        raise ValueError(f"need 0 < min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
    return torch.exp(classifier.logits(embeddings)).clamp(min=min_ratio, max=max_ratio)
