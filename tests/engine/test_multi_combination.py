"""`combined_loss` with the log-prob Gram (the exact parameter Gram is tested in test_gradient_gram.py and end to
end in test_multi_objective.py): the backpropagated Σ a_i·L_i has the gradient Σ a_i·g_i of the solved combination, and the
Gram matrix is exact when the batch is split over ranks (2 gloo processes vs one)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from framework.engine.multi import combined_loss
from framework.objectives import build_objective, combine
from tests.objectives.helpers import random_stats


def _Local():
    """The real seam: `combined_loss` uses only its world size and all-reduce (torch.distributed when initialised)."""
    from framework.config import DeepSpeedConfig, TrainConfig
    from framework.engine.seam import DeepSpeedSeam

    return DeepSpeedSeam(DeepSpeedConfig(), TrainConfig(), torch.device("cpu"), "gloo")


def _inputs(batch=6, seed=0):
    policy, reference = random_stats(batch, 2, seed=seed)
    scores = torch.randn(batch, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 7))
    scores[:, :, 1] = -scores[:, :, 0] + 0.3 * scores[:, :, 1]  # mostly conflicting objectives
    return policy, reference, {"objective_scores": scores}


@pytest.mark.parametrize("name,hparams", [("raco", {"weights": [0.7, 0.3]}), ("mgda", {}), ("pcgrad", {}),
                                          ("cagrad", {"c": 0.3})])  # the log-prob Gram (no engine needed)
def test_backpropagated_loss_has_the_combined_gradient(name, hparams):
    objective = build_objective(name, gram="logps", **hparams)
    policy, reference, batch = _inputs()
    out = objective.loss(policy, reference, batch)
    weights = torch.ones(6, dtype=torch.float64)
    loss, metrics = combined_loss(_Local(), objective, out, policy.logps, weights, 1 / 6, ["a", "b"])
    (grad,) = torch.autograd.grad(loss, policy.logps, retain_graph=True)
    g = torch.stack([torch.autograd.grad(out.components[:, i].mean(), policy.logps, retain_graph=True)[0].flatten()
                     for i in range(2)])
    if name == "pcgrad":
        objective._calls -= 1  # replay the same projection order
    a = combine(objective.method, g @ g.T, out.weights, **objective.method_hparams()).coefficients
    assert torch.allclose(grad.flatten(), a @ g, atol=1e-12)
    assert float(metrics["mo/coef/a"]) == pytest.approx(float(a[0]))
    cos = float(g[0] @ g[1] / (g[0].norm() * g[1].norm()))
    assert float(metrics["mo/cos/a-b"]) == pytest.approx(cos)


def test_raco_with_c0_is_the_weighted_sum_loss():
    objective = build_objective("raco", weights=[0.6, 0.4], c=0.0, gram="logps")
    policy, reference, batch = _inputs(seed=3)
    out = objective.loss(policy, reference, batch)
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # one padding row
    loss, _ = combined_loss(_Local(), objective, out, policy.logps, weights, 1 / 5, ["a", "b"])
    assert float(loss.detach()) == pytest.approx(float((out.losses.detach() * weights).sum() / 5), abs=1e-12)


def _rank(rank: int, port: int, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    objective = build_objective("raco", weights=[0.7, 0.3], gram="logps")
    policy, reference, batch = _inputs(batch=8, seed=5)
    rows = slice(rank * 4, rank * 4 + 4)
    policy = type(policy)(policy.logps.detach()[rows].clone().requires_grad_(True), policy.lengths[rows])
    reference = type(reference)(reference.logps[rows], reference.lengths[rows])
    out = objective.loss(policy, reference, {"objective_scores": batch["objective_scores"][rows]})
    # DeepSpeed's factor: world size × accumulation / global count.
    loss, metrics = combined_loss(_Local(), objective, out, policy.logps, torch.ones(4, dtype=torch.float64), 2 / 8, ["a", "b"])
    (grad,) = torch.autograd.grad(loss, policy.logps)
    result[rank] = {"coef": float(metrics["mo/coef/a"]), "norm": float(metrics["mo/grad_norm/a"]),
                    "grad": (grad / 2).tolist()}  # / world size: DeepSpeed's average
    torch.distributed.destroy_process_group()


def test_gram_over_two_ranks_equals_one_process():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    result = manager.dict()
    mp.start_processes(_rank, args=(port, result), nprocs=2, start_method="spawn", join=True)
    objective = build_objective("raco", weights=[0.7, 0.3], gram="logps")
    policy, reference, batch = _inputs(batch=8, seed=5)
    out = objective.loss(policy, reference, batch)
    loss, metrics = combined_loss(_Local(), objective, out, policy.logps, torch.ones(8, dtype=torch.float64), 1 / 8, ["a", "b"])
    (grad,) = torch.autograd.grad(loss, policy.logps)
    for rank in (0, 1):
        assert result[rank]["coef"] == pytest.approx(float(metrics["mo/coef/a"]), abs=1e-12)
        assert result[rank]["norm"] == pytest.approx(float(metrics["mo/grad_norm/a"]), rel=1e-12)
        assert torch.allclose(torch.tensor(result[rank]["grad"], dtype=torch.float64), grad[rank * 4: rank * 4 + 4], atol=1e-14)
