"""SDPA per block for packed rows, registered with transformers as the attention implementation `alignray_blocks`.

A packed row's mask is block-diagonal (and, with a shared prompt, each response sees only the prompt and itself).
One masked SDPA call over the row computes every query against every key of the row: on CPU the masked kernel
skips nothing, so two blocks in a row cost (a+b)² and a shared prompt's own causal triangle is paid in full. Per
block instead: the prompt (or a whole unshared sequence) runs causal SDPA without a mask (the kernel skips the
upper triangle), and the block's responses run one SDPA against that block's keys with the block's slice of the
mask. Same values as the masked call; every call is torch SDPA through transformers' own `sdpa_attention_forward`.

A mask that carries no block spans (padded rows, generation) goes to plain SDPA unchanged.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "alignray_blocks"
# Rows shorter than this run one masked call: for short rows per-block calls cost more in overhead than they save.
BLOCKWISE_FROM = 256
Spans = List[List[Tuple[int, int, int]]]  # per row: (start, causal end, end) of each block


def with_spans(mask: torch.Tensor, spans: Spans) -> torch.Tensor:
    """Attach the block spans to the 4D mask the model receives (transformers passes a 4D mask through as is)."""
    if mask.shape[-1] >= BLOCKWISE_FROM:
        mask.alignray_spans = spans
    return mask


def block_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                    **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """query [B, H, T, D], key/value [B, Hkv, T, D] → ([B, T, H, D], None), as `sdpa_attention_forward`."""
    spans = getattr(attention_mask, "alignray_spans", None)
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])  # padding stays 0
    for row, blocks in enumerate(spans):
        q, k, v = query[row:row + 1], key[row:row + 1], value[row:row + 1]
        for start, causal_end, end in blocks:
            if causal_end > start:
                part, _ = sdpa_attention_forward(module, q[:, :, start:causal_end], k[:, :, start:causal_end],
                                                 v[:, :, start:causal_end], None, dropout, scaling, is_causal=True)
                out[row, start:causal_end] = part[0]
            if end > causal_end:
                part, _ = sdpa_attention_forward(module, q[:, :, causal_end:end], k[:, :, start:end], v[:, :, start:end],
                                                 attention_mask[row:row + 1, :, causal_end:end, start:end], dropout,
                                                 scaling, is_causal=False)
                out[row, causal_end:end] = part[0]
    return out, None


AttentionInterface.register(NAME, block_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # masks for padded inputs are built as for SDPA


def use_block_attention(config: Any) -> None:
    """Switch a model from SDPA to `alignray_blocks` (the same kernel; padded inputs are unaffected)."""
    if getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = NAME
