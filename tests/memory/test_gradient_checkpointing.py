"""Gradient checkpointing (non-reentrant) changes memory, not math: same loss and gradients as without, also
with LoRA (frozen embeddings); and architectures without support are refused before anything is built."""

from __future__ import annotations

import pytest
import torch

from framework.errors import UserError
from framework.model.batching import collate
from framework.model.logprobs import sequence_logps


def _loss_and_grads(model: torch.nn.Module) -> tuple:
    torch.manual_seed(3)
    prompts = [torch.randint(3, 200, (6,)).tolist() for _ in range(2)]
    responses = [[torch.randint(3, 200, (n,)).tolist() for n in (12, 7)] for _ in range(2)]
    batch = collate(prompts, responses, pad_id=0, max_length=32, max_prompt_length=8)
    model.zero_grad()
    logps = sequence_logps(model, batch)["logps"]
    loss = -torch.nn.functional.logsigmoid(logps[:, 0] - logps[:, 1]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model(path: str, lora: bool, checkpointing: bool) -> torch.nn.Module:
    from framework.config import LoraConfig
    from framework.model.loading import enable_gradient_checkpointing, load_causal_lm
    from framework.model.lora import apply_lora

    model = load_causal_lm(path)
    if lora:
        model = apply_lora(model, LoraConfig(r=4))
        for name, param in model.named_parameters():  # B = 0 would give lora_A no gradient to compare
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(0))
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model.train()


def _counting(forward, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)
    return counted


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir, lora):
    plain_loss, plain_grads = _loss_and_grads(_model(tiny_model_dir, lora, checkpointing=False))
    checkpointed = _model(tiny_model_dir, lora, checkpointing=True)
    base = checkpointed.get_base_model() if lora else checkpointed
    assert base.is_activation_checkpointing
    recomputed = []  # count each layer's MLP forward (a checkpoint recompute does not fire module hooks)
    for layer in base.model.layers:
        layer.mlp.forward = _counting(layer.mlp.forward, recomputed)
    loss, grads = _loss_and_grads(checkpointed)
    assert len(recomputed) == 2 * len(base.model.layers), "each layer must run again in backward"
    assert torch.allclose(loss, plain_loss, atol=1e-6)
    assert grads.keys() == plain_grads.keys() and grads
    if lora:
        assert all("lora_" in name for name in grads)
    for name, grad in plain_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-6, rtol=1e-5), name


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import OpenAIGPTConfig

    from framework.model.loading import check_memory_options

    OpenAIGPTConfig(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="OpenAIGPTLMHeadModel .* does not support it"):
        check_memory_options(str(tmp_path), gradient_checkpointing=True, sequence_parallel=1)
    check_memory_options(str(tmp_path), gradient_checkpointing=False, sequence_parallel=2)  # 2 heads: fine
    with pytest.raises(UserError, match="must divide the model's attention heads"):
        check_memory_options(str(tmp_path), gradient_checkpointing=False, sequence_parallel=4)
