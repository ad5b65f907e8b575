import math

import pytest
import torch

from framework.objectives import build_objective

from .helpers import grad_of, random_stats, ratio_stats, tensor

LAMBDA_K2 = 1 - 1 / math.log2(3)


def naive_lipo(scores, labels):
    """Direct transcription of the LiPO-λ sum for one list, with Python floats."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    rank = {item: position + 1 for position, item in enumerate(order)}
    total = 0.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                delta = abs((2 ** labels[i] - 1) - (2 ** labels[j] - 1)) * abs(1 / math.log2(1 + rank[i]) - 1 / math.log2(1 + rank[j]))
                total += delta * math.log1p(math.exp(-(scores[i] - scores[j])))
    return total


def test_k2_binary_labels_is_0369_dpo():
    assert LAMBDA_K2 == pytest.approx(0.3691, abs=1e-4)
    policy, reference = random_stats(32, 2, seed=20)
    lipo = build_objective("lipo_lambda", beta=0.1).loss(policy, reference, {"scores": tensor([[1.0, 0.0]] * 32)})
    dpo = build_objective("dpo", beta=0.1).loss(policy, reference, {})
    torch.testing.assert_close(lipo.losses, LAMBDA_K2 * dpo.losses)


def test_matches_naive_sum_on_hand_list():
    beta = 1.0
    rho, labels = tensor([[0.2, 0.5, -0.1, 0.9]]), tensor([[1.0, 0.5, 0.0, 0.25]])
    policy, reference = ratio_stats(rho)
    out = build_objective("lipo_lambda", beta=beta).loss(policy, reference, {"scores": labels})
    torch.testing.assert_close(out.losses, tensor([naive_lipo(rho[0].tolist(), labels[0].tolist())]))


def test_permutation_and_shift_invariance():
    policy, reference = random_stats(6, 5, seed=21, requires_grad=False)
    labels = torch.rand(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    obj = build_objective("lipo_lambda", beta=0.1)
    base = obj.loss(policy, reference, {"scores": labels}).losses
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = obj.loss(type(policy)(policy.logps[:, perm], policy.lengths[:, perm]), type(reference)(reference.logps[:, perm], reference.lengths[:, perm]), {"scores": labels[:, perm]})
    torch.testing.assert_close(permuted.losses, base)
    shifted = type(policy)(policy.logps + 123.0, policy.lengths)
    torch.testing.assert_close(obj.loss(shifted, reference, {"scores": labels}).losses, base)


def test_tied_labels_contribute_nothing():
    policy, reference = random_stats(4, 3, seed=22)
    out = build_objective("lipo_lambda").loss(policy, reference, {"scores": tensor([[0.5, 0.5, 0.5]] * 4)})
    torch.testing.assert_close(out.losses, torch.zeros(4, dtype=torch.float64))


def test_mask_equals_truncated_list_even_with_garbage():
    policy, reference = random_stats(3, 4, seed=23)
    labels = tensor([[0.9, 0.1, 0.5, 0.7]] * 3)
    mask = torch.tensor([[True, True, True, False]] * 3)
    garbage = policy.logps.detach().clone()
    garbage[:, 3] = float("nan")
    obj = build_objective("lipo_lambda")
    masked = obj.loss(type(policy)(garbage, policy.lengths), reference, {"scores": labels, "mask": mask}).losses
    truncated = obj.loss(type(policy)(policy.logps[:, :3], policy.lengths[:, :3]), type(reference)(reference.logps[:, :3], reference.lengths[:, :3]), {"scores": labels[:, :3]}).losses
    torch.testing.assert_close(masked, truncated)


def test_weights_carry_no_gradient():
    # Rank weights are constants: the gradient is Σ Δ_ij·∂softplus(−(s_i − s_j)), checked by finite differences
    # on a list whose model ranks do not change under the perturbation.
    rho = tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    policy, reference = ratio_stats(rho)
    labels = tensor([[1.0, 0.0, 0.5]])
    loss = build_objective("lipo_lambda", beta=1.0).loss(policy, reference, {"scores": labels}).losses
    g = grad_of(loss, rho)
    eps = 1e-6
    for k in range(3):
        bumped = rho.detach().clone()
        bumped[0, k] += eps
        fd = (naive_lipo(bumped[0].tolist(), labels[0].tolist()) - naive_lipo(rho[0].tolist(), labels[0].tolist())) / eps
        assert float(g[0, k]) == pytest.approx(fd, abs=1e-5)


def test_normalizations():
    policy, reference = random_stats(2, 4, seed=24, requires_grad=False)
    labels = tensor([[1.0, 0.0, 0.5, 0.25], [1.0, 1.0, 0.0, 0.0]])
    plain = build_objective("lipo_lambda").loss(policy, reference, {"scores": labels}).losses
    pairs = build_objective("lipo_lambda", normalization="pairs").loss(policy, reference, {"scores": labels}).losses
    torch.testing.assert_close(pairs, plain / tensor([6.0, 4.0]))
    idcg = build_objective("lipo_lambda", normalization="ideal_dcg").loss(policy, reference, {"scores": labels}).losses
    gains = [[1.0, 2**0.5 - 1, 2**0.25 - 1, 0.0], [1.0, 1.0, 0.0, 0.0]]
    ideal = tensor([sum(g / math.log2(2 + i) for i, g in enumerate(row)) for row in gains])
    torch.testing.assert_close(idcg, plain / ideal)
    with pytest.raises(ValueError, match="normalization"):
        build_objective("lipo_lambda", normalization="ndcg")


def test_ranking_metrics():
    policy, reference = ratio_stats(tensor([[3.0, 1.0, 2.0]]))
    out = build_objective("lipo_lambda", beta=1.0).loss(policy, reference, {"scores": tensor([[1.0, 0.5, 0.0]])})
    torch.testing.assert_close(out.metrics["ranking/pair_accuracy"], tensor([2 / 3]))
    torch.testing.assert_close(out.metrics["ranking/top1_accuracy"], tensor([1.0]))
    with pytest.raises(KeyError, match="scores"):
        build_objective("lipo_lambda").loss(policy, reference, {})
