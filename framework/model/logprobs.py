"""Per-sequence log-probs from one forward pass over a `TokenBatch`."""

from __future__ import annotations

from typing import Dict

import torch

from framework.model.batching import TokenBatch


def token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log softmax(logits)[label] per position, in fp32, without materialising the full log-softmax:
    gather the label logit and subtract the row's logsumexp, a few rows at a time."""
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], chunk_rows):
        block = logits[start : start + chunk_rows].float()
        picked = block.gather(-1, labels[start : start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        out[start : start + chunk_rows] = picked - torch.logsumexp(block, dim=-1)
    return out


def sequence_logps(model: torch.nn.Module, batch: TokenBatch, with_prompt: bool = False) -> Dict[str, torch.Tensor]:
    """Forward the whole batch once; return [B, K] tensors `logps` (sum over response tokens), `lengths`,
    and with `with_prompt` also `prompt_logps`/`prompt_lengths` (the first prompt token has no prediction)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    per_token = token_logps(logits[:, :-1], batch.input_ids[:, 1:])
    shape = (batch.num_examples, batch.num_responses)

    def reduce(mask: torch.Tensor) -> tuple:
        mask = mask[:, 1:].to(per_token.dtype)
        return (per_token * mask).sum(-1).view(shape), mask.sum(-1).view(shape)

    logps, lengths = reduce(batch.response_mask)
    out = {"logps": logps, "lengths": lengths}
    if with_prompt:
        out["prompt_logps"], out["prompt_lengths"] = reduce(batch.prompt_mask)
    return out


def sequence_rewards(model: torch.nn.Module, batch: TokenBatch) -> Dict[str, torch.Tensor]:
    """Scalar-head scores at each sequence's last real token (HF sequence-classification models pick it from
    the pad token id, so padding must be on the right, as `collate` does). Returns [B, K] `rewards`."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    shape = (batch.num_examples, batch.num_responses)
    lengths = batch.response_mask.sum(-1).to(torch.float32).view(shape)
    return {"logps": torch.zeros(shape, device=logits.device), "lengths": lengths,
            "rewards": logits[:, 0].float().view(shape)}
