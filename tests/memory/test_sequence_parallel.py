"""Ulysses SP=2 on 2 gloo processes (real torch.distributed + DeepSpeed's Ulysses attention, no Ray) gives the
same per-sequence log-probs, loss and gradient as one process without SP; also with tiled log-probs and
gradient checkpointing. Tolerance: 1e-5 absolute on log-probs/loss, 1e-5 relative-ish on gradients (fp32)."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from tests.conftest import free_port

SP = 2


def _batch():
    from framework.model.batching import collate

    torch.manual_seed(5)  # odd lengths: the SP path pads to a multiple of the group size
    prompts = [torch.randint(3, 200, (n,)).tolist() for n in (6, 4, 9)]
    responses = [[torch.randint(3, 200, (n,)).tolist() for n in lengths] for lengths in ((13, 6), (21, 3), (8, 10))]
    return collate(prompts, responses, pad_id=0, max_length=40, max_prompt_length=10)


def _loss(out) -> torch.Tensor:
    logps = out["logps"]
    return -torch.nn.functional.logsigmoid(logps[:, 0] - logps[:, 1]).sum() + 0.1 * out["prompt_logps"].sum()


def _forward_backward(model, batch, stats_fn) -> tuple:
    model.zero_grad()
    out = stats_fn(model, batch)
    loss = _loss(out)
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return {k: v.detach() for k, v in out.items()}, loss.detach(), grads


def _worker(rank: int, port: int, model_dir: str, result_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(SP), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from framework.config import DeepSpeedConfig, TrainConfig
    from framework.engine import sequence_parallel
    from framework.engine.seam import DeepSpeedSeam
    from framework.model.loading import enable_gradient_checkpointing, load_causal_lm
    from framework.model.logprobs import sequence_logps

    DeepSpeedSeam(DeepSpeedConfig(), TrainConfig(), torch.device("cpu"), "gloo").init_distributed()
    model = load_causal_lm(model_dir).train()
    batch = _batch()
    results = {"plain": _forward_backward(model, batch, lambda m, b: sequence_logps(m, b, True, tile_above=0))}
    sp = sequence_parallel.install(model.config, SP)  # from here on every sdpa call goes through Ulysses
    for variant, tile_above in (("sharded", 0), ("sharded+checkpointed+tiled", 8)):
        if tile_above:
            enable_gradient_checkpointing(model)
        results[variant] = _forward_backward(model, batch, lambda m, b: sequence_parallel.sequence_logps(
            m, b, sp, with_prompt=True, tile_above=tile_above))
        torch.distributed.all_reduce(results[variant][2])  # what DeepSpeed sums (then averages) over the ranks
    torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_sp2_equals_sp1(tiny_model_dir, tmp_path):
    mp.start_processes(_worker, args=(free_port(), tiny_model_dir, str(tmp_path)), nprocs=SP,
                       start_method="spawn", join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(SP)]
    plain_out, plain_loss, plain_grad = results[0]["plain"]
    for result, variant in [(r, v) for r in results for v in ("sharded", "sharded+checkpointed+tiled")]:
        out, loss, grad = result[variant]
        for key in ("logps", "lengths", "prompt_logps", "prompt_lengths"):
            assert torch.allclose(out[key], plain_out[key], atol=1e-5), (variant, key)
        assert torch.allclose(loss, plain_loss, atol=1e-5), variant
        # Each rank backpropagates the group's loss through the all-reduce: the group's summed gradient is
        # SP × the single-process gradient, which the step's normalisation (examples counted SP times) undoes.
        assert torch.allclose(grad / SP, plain_grad, atol=1e-6, rtol=1e-4), variant
