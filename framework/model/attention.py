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
    # Rows, then each row's block parts, are cut with `split` and joined with `cat`: their backward is one cat
    # or split per row. Slicing (or writing into a buffer) would make autograd build a full-size gradient per
    # piece (seen: fill_/copy_/add_ at 40% of the step).
    rows = []
    for q, k, v, mask, blocks in zip(query.split(1), key.split(1), value.split(1), attention_mask.split(1), spans):
        used = blocks[-1][2] if blocks else 0
        cuts = [point for block in blocks for point in block[:2]] + [used, query.shape[2]]
        sizes = [b - a for a, b in zip(cuts, cuts[1:])]  # causal part, responses, per block; then the padding
        qs, ks, vs = q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2)
        parts = []
        for i, (start, causal_end, end) in enumerate(blocks):
            c, r = 2 * i, 2 * i + 1  # piece indices: the causal part, then the responses
            if causal_end > start:  # empty for a shared block with an empty prompt
                parts.append(sdpa_attention_forward(module, qs[c], ks[c], vs[c], None, dropout, scaling,
                                                    is_causal=True)[0])
            if end > causal_end:
                keys, values = torch.cat([ks[c], ks[r]], 2), torch.cat([vs[c], vs[r]], 2)
                parts.append(sdpa_attention_forward(module, qs[r], keys, values,
                                                    mask[:, :, causal_end:end, start:end], dropout, scaling,
                                                    is_causal=False)[0])
        if used < query.shape[2]:  # padding at the row's end: its output is never read
            parts.append(query.new_zeros(1, query.shape[2] - used, query.shape[1], value.shape[-1]))
        rows.append(torch.cat(parts, dim=1))
    out = torch.cat(rows)
    return out, None


AttentionInterface.register(NAME, block_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # masks for padded inputs are built as for SDPA


def use_block_attention(config: Any) -> None:
    """Switch a model from SDPA to `alignray_blocks` (the same kernel; padded inputs are unaffected)."""
    if getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = NAME
