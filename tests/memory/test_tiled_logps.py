"""Tiled log-probs (no [B, T, V] logits) equal the plain path: values and gradients, with and without LoRA."""

from __future__ import annotations

import pytest
import torch

from framework.model.batching import collate
from framework.model.logprobs import sequence_logps, tiled_token_logps, token_logps


def _batch(length: int = 40):
    torch.manual_seed(1)
    prompts = [torch.randint(3, 200, (7,)).tolist(), torch.randint(3, 200, (5,)).tolist()]
    responses = [[torch.randint(3, 200, (length,)).tolist(), torch.randint(3, 200, (length - 9,)).tolist()],
                 [torch.randint(3, 200, (length - 3,)).tolist(), torch.randint(3, 200, (4,)).tolist()]]
    return collate(prompts, responses, pad_id=0, max_length=length + 8, max_prompt_length=8)


def _loss_and_grads(model: torch.nn.Module, batch, tile_above: int) -> tuple:
    model.zero_grad()
    out = sequence_logps(model, batch, with_prompt=True, tile_above=tile_above)
    # A DPO-like, non-linear use of the sums, so per-sequence gradients differ.
    loss = -torch.nn.functional.logsigmoid(out["logps"][:, 0] - out["logps"][:, 1]).sum() + out["prompt_logps"].sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


def test_tiled_token_logps_matches_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    weights = torch.randn(3, 11)
    plain = token_logps(head(hidden), labels)
    (plain * weights).sum().backward()
    expected = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    tiled = tiled_token_logps(head, hidden, labels, tile=4)  # 33 positions: tiles of 4 and a last one of 1
    (tiled * weights).sum().backward()
    assert torch.allclose(tiled, plain, atol=1e-6)
    assert torch.allclose(hidden.grad, expected[0], atol=1e-6)
    assert torch.allclose(head.weight.grad, expected[1], atol=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_tiled_sequence_logps_equal_plain_values_and_gradients(tiny_model_dir, lora, monkeypatch):
    from framework.config import LoraConfig
    from framework.model import logprobs
    from framework.model.loading import load_causal_lm
    from framework.model.lora import apply_lora

    model = load_causal_lm(tiny_model_dir)
    if lora:
        model = apply_lora(model, LoraConfig(r=4, target_modules="all-linear"))
        for name, param in model.named_parameters():  # B = 0 would leave A without a gradient to compare
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
    model.train()
    batch = _batch()
    plain, plain_loss, plain_grads = _loss_and_grads(model, batch, tile_above=0)
    calls = []
    tile = lambda *a, **k: calls.append(1) or tiled_token_logps(*a, tile=13)  # noqa: E731  4 tiles, the last partial
    monkeypatch.setattr(logprobs, "tiled_token_logps", tile)
    tiled, tiled_loss, tiled_grads = _loss_and_grads(model, batch, tile_above=16)
    assert calls, "the batch is longer than tile_above: the tiled path must run"
    for key in plain:
        assert torch.allclose(tiled[key], plain[key], atol=1e-5), key
    assert torch.allclose(tiled_loss, plain_loss, atol=1e-5)
    assert plain_grads.keys() == tiled_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        assert torch.allclose(tiled_grads[name], grad, atol=1e-6, rtol=1e-4), name
