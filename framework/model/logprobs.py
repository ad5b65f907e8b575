"""Per-sequence log-probs from one forward pass over a `TokenBatch`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.checkpoint import checkpoint

from framework.model.batching import PackedBatch, TokenBatch

# Sequences longer than this (tokens) get tiled log-probs by default: see `tiled_token_logps`.
DEFAULT_TILE_ABOVE = 1024
# Positions per tile: one tile's logits are TILE_POSITIONS × vocab floats (128 MiB for a 32k vocabulary in fp32).
TILE_POSITIONS = 1024


def token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log softmax(logits)[label] per position, in fp32, without materialising the full log-softmax:
    gather the label logit and subtract the row's logsumexp, a few rows at a time."""
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], chunk_rows):
        block = logits[start : start + chunk_rows].float()
        picked = block.gather(-1, labels[start : start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        out[start : start + chunk_rows] = picked - torch.logsumexp(block, dim=-1)
    return out


def _label_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return token_logps(head(hidden).unsqueeze(0), labels.unsqueeze(0))[0]


def tiled_token_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                      tile: int = TILE_POSITIONS) -> torch.Tensor:
    """`token_logps(head(hidden), labels)` for hidden [B, T, H] without ever holding [B, T, V] logits, forward or
    backward: each tile of positions goes hidden → logits → log-prob under a non-reentrant checkpoint, so only
    its inputs are kept and backward recomputes one tile's logits at a time. `head` is called as a module, so
    ZeRO-3 gathers its weight for each tile (and for each recompute) as it does for the plain forward."""
    flat_hidden, flat_labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    tiles = [checkpoint(_label_logps, head, flat_hidden[start:start + tile], flat_labels[start:start + tile],
                        use_reentrant=False)
             for start in range(0, flat_labels.numel(), tile)]
    return torch.cat(tiles).view(labels.shape)


def _inner(model: Any) -> Any:
    """The HF model under LoRA's adapters-off reference view and the DeepSpeed engine."""
    inner = getattr(model, "engine", model)
    return getattr(inner, "module", inner)


def _tiling_head(model: Any) -> Optional[torch.nn.Module]:
    """The LM head when logits are exactly head(last hidden state), else None (the plain path is then used):
    models with soft-capped or scaled logits (Gemma 2, Cohere) post-process them."""
    inner = _inner(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    get_head = getattr(inner, "get_output_embeddings", None)
    return get_head() if get_head is not None else None


def label_logps(model: Any, inputs: Dict[str, Optional[torch.Tensor]], labels: torch.Tensor,
                tile_above: int = DEFAULT_TILE_ABOVE, tile_length: Optional[int] = None) -> torch.Tensor:
    """[N, T] log-prob of `labels` at each position of the forward of `inputs` (input_ids and optionally
    attention_mask / position_ids, [N, T]); tiled when `tile_length` (default T) exceeds `tile_above` (0 = never)."""
    length = tile_length or labels.shape[1]
    head = _tiling_head(model) if 0 < tile_above < length else None
    if head is None:
        return token_logps(model(**inputs, use_cache=False).logits, labels)
    # logits_to_keep=1: the model's own head runs on one position only; the last hidden state (after the final
    # norm) comes back as hidden_states[-1], through the same wrappers (DeepSpeed engine, peft) as the plain path.
    out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    return tiled_token_logps(head, out.hidden_states[-1], labels)


def _per_token_logps(model: Any, batch: TokenBatch, tile_above: int) -> torch.Tensor:
    """[B*K, T-1] log-prob of each next token (the last position predicts nothing: its label is a dummy 0)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    labels = torch.nn.functional.pad(batch.input_ids[:, 1:], (0, 1))
    return label_logps(model, inputs, labels, tile_above)[:, :-1]


def attention_kind(model: Any) -> str:
    """The model's attention implementation (`sdpa`, `eager`, `flash_attention_2`, …)."""
    config = getattr(_inner(model), "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def supports_packed(model: Any, shared_prompt: bool = True) -> bool:
    """Shared-prompt rows need a custom 4D mask, which SDPA and eager attention take; packed single sequences
    also run on FlashAttention's variable-length path (blocks found from the position resets)."""
    kind = attention_kind(model)
    return kind in ("sdpa", "alignray_blocks", "eager") or (not shared_prompt and kind.startswith("flash"))


def _packed_inputs(model: Any, batch: PackedBatch) -> Dict[str, torch.Tensor]:
    kind = attention_kind(model)
    if not supports_packed(model, batch.shared_prompt):
        raise ValueError(f"shared-prompt rows need SDPA or eager attention, not {kind}: set model.shared_prompt=false")
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids}
    if kind == "eager":
        inputs["attention_mask"] = batch.attention_mask(_inner(model).dtype)
    elif not kind.startswith("flash"):  # FlashAttention: no mask, transformers reads the blocks off position_ids
        from framework.model.attention import use_block_attention, with_spans

        use_block_attention(_inner(model).config)  # SDPA per block (framework/model/attention.py)
        inputs["attention_mask"] = with_spans(batch.attention_mask(), batch.spans)
    return inputs


def packed_sequence_logps(model: Any, batch: PackedBatch, with_prompt: bool = False,
                          tile_above: int = DEFAULT_TILE_ABOVE) -> Dict[str, torch.Tensor]:
    """`sequence_logps` for the packed layout: one forward of the rows, then the LM head on the predicting
    positions only (no logits for the prompt unless `with_prompt`; a shared prompt's last position feeds the
    first token of each of its responses)."""
    inputs = _packed_inputs(model, batch)
    keep = torch.ones_like(batch.is_prompt) if with_prompt else ~batch.is_prompt
    source, label, owner = batch.source[keep], batch.label[keep], batch.owner[keep]
    head = _tiling_head(model)
    if head is None:
        logits = model(**inputs, use_cache=False).logits
        per_token = token_logps(logits.flatten(0, 1)[source].unsqueeze(0), label.unsqueeze(0))[0]
    else:
        out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        picked = out.hidden_states[-1].flatten(0, 1)[source].unsqueeze(0)
        if 0 < tile_above < batch.input_ids.shape[1]:
            per_token = tiled_token_logps(head, picked, label.unsqueeze(0))[0]
        else:
            per_token = token_logps(head(picked), label.unsqueeze(0), chunk_rows=1)[0]
    shape = (batch.num_examples, batch.num_responses)
    prompt = batch.is_prompt[keep]

    def reduce(select: torch.Tensor) -> tuple:
        sums = per_token.new_zeros(shape[0] * shape[1]).index_add(0, owner[select], per_token[select])
        counts = per_token.new_zeros(shape[0] * shape[1]).index_add(0, owner[select], torch.ones_like(per_token[select]))
        return sums.view(shape), counts.view(shape)

    logps, _ = reduce(~prompt)
    out = {"logps": logps, "lengths": batch.lengths.to(per_token.dtype)}
    if with_prompt:
        out["prompt_logps"], out["prompt_lengths"] = reduce(prompt)
    return out


def sequence_logps(model: torch.nn.Module, batch: "TokenBatch | PackedBatch", with_prompt: bool = False,
                   tile_above: int = DEFAULT_TILE_ABOVE) -> Dict[str, torch.Tensor]:
    """Forward the whole batch once; return [B, K] tensors `logps` (sum over response tokens), `lengths`,
    and with `with_prompt` also `prompt_logps`/`prompt_lengths` (the first prompt token has no prediction).
    Batches longer than `tile_above` tokens never materialise the [B, T, V] logits (`tiled_token_logps`)."""
    if isinstance(batch, PackedBatch):
        return packed_sequence_logps(model, batch, with_prompt, tile_above)
    per_token = _per_token_logps(model, batch, tile_above)
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
