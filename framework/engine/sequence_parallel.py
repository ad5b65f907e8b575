"""Ulysses sequence parallelism (DeepSpeed ALST) for per-sequence log-probs.

`train.sequence_parallel=N` splits every sequence of a batch over N consecutive ranks (an SP group); the ranks of
a group read the same examples (data parallelism runs over groups: workers = dp × sp). Each rank forwards its
slice of positions; DeepSpeed's `UlyssesSPAttentionHF` swaps sequence for heads with an all-to-all around each
attention call, so attention still sees the whole sequence. The per-sequence sums of token log-probs are then
summed over the group with a differentiable all-reduce, and every rank of the group computes the same loss.

Gradient bookkeeping: the all-reduce's backward sums the group's (equal) incoming gradients, i.e. each group
backpropagates its loss N times over; the step normalises by the global example count, which counts each example
on all N ranks, so DeepSpeed's average over all dp × N ranks gives exactly the data-parallel gradient.

Padding is on the right and Ulysses attends causally without the padding mask, which leaves every real token's
output unchanged (pads only follow real tokens). Once installed, every sdpa attention call of the process goes
through Ulysses, so every forward (policy, reference, evaluation) must come through `sequence_logps` here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from framework.model.batching import TokenBatch
from framework.model.logprobs import DEFAULT_TILE_ABOVE, label_logps

ATTENTION = "sdpa"  # the HF attention implementation Ulysses wraps (eager needs a 4-D mask and is refused)


@dataclasses.dataclass
class SequenceGroup:
    group: Any  # torch.distributed process group of the ranks sharing each sequence
    size: int
    rank: int  # this rank's index in the group = which slice of positions it holds


_ACTIVE: Optional[SequenceGroup] = None


def active() -> Optional[SequenceGroup]:
    """The installed sequence-parallel group of this process, or None (plain forwards)."""
    return _ACTIVE


def data_parallel_rank(rank: int, world_size: int, sequence_parallel: int) -> tuple:
    """(rank, world size) for the data sampler: the ranks of one SP group read the same examples."""
    return rank // sequence_parallel, world_size // sequence_parallel


def install(model_config: Any, size: int) -> SequenceGroup:
    """Create the SP groups (consecutive ranks) and route sdpa attention through Ulysses. Call once per
    process after the process group exists and before the first forward; models must use attn_implementation
    "sdpa" (the HF default for Llama-like models)."""
    global _ACTIVE
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    mpu.initialize_sequence_parallel(sequence_parallel_size=size)
    group = mpu.get_sequence_parallel_group()
    text = model_config.get_text_config()
    core = ALL_ATTENTION_FUNCTIONS[ATTENTION]
    by_batch: Dict[int, Any] = {}  # Ulysses fixes the batch size per instance; ours varies (pairs, lists, eval)

    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], *args: Any, **kwargs: Any) -> tuple:
        batch = query.shape[0]
        if batch not in by_batch:
            by_batch[batch] = UlyssesSPAttentionHF(
                attn=core, batch_size=batch, attn_head_count=text.num_attention_heads,
                attn_head_size=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
                kv_head_count=text.num_key_value_heads, num_hidden_layers=text.num_hidden_layers,
                process_group=group, seq_length_is_variable=True)
        return by_batch[batch](module, query, key, value, None, *args, **kwargs)  # causal, see module doc

    ALL_ATTENTION_FUNCTIONS[ATTENTION] = attention
    _ACTIVE = SequenceGroup(group, size, torch.distributed.get_rank(group))
    return _ACTIVE


class _GroupSum(torch.autograd.Function):
    """Sum over the group in forward; in backward, each rank's gradient is the sum of the group's gradients
    (what torch.distributed.nn's deprecated all_reduce does)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def _shifted(tensor: torch.Tensor, width: int, fill: Any) -> torch.Tensor:
    """`tensor[:, 1:]` right-padded with `fill` to `width` columns: what position i predicts (token i+1)."""
    return F.pad(tensor[:, 1:], (0, width - tensor.shape[1] + 1), value=fill)


def sequence_logps(model: Any, batch: TokenBatch, sp: SequenceGroup, with_prompt: bool = False,
                   tile_above: int = DEFAULT_TILE_ABOVE) -> Dict[str, torch.Tensor]:
    """`framework.model.logprobs.sequence_logps` with each sequence split over the SP group: this rank forwards
    positions [rank·t, (rank+1)·t) of the batch right-padded to a multiple of the group size; the per-sequence
    sums are all-reduced over the group (with gradient). Same outputs on every rank of the group."""
    ids = batch.input_ids
    width = -(-ids.shape[1] // sp.size) * sp.size
    local = slice(sp.rank * width // sp.size, (sp.rank + 1) * width // sp.size)
    padded = F.pad(ids, (0, width - ids.shape[1]), value=0)
    positions = torch.arange(width, device=ids.device).expand(ids.shape[0], width)
    inputs = {"input_ids": padded[:, local], "position_ids": positions[:, local]}
    per_token = label_logps(model, inputs, _shifted(ids, width, 0)[:, local], tile_above, tile_length=width)
    shape = (batch.num_examples, batch.num_responses)

    def reduce(mask: torch.Tensor) -> tuple:
        full = _shifted(mask, width, False).to(per_token.dtype)
        summed = _GroupSum.apply((per_token * full[:, local]).sum(-1), sp.group)
        return summed.view(shape), full.sum(-1).view(shape)

    logps, lengths = reduce(batch.response_mask)
    out = {"logps": logps, "lengths": lengths}
    if with_prompt:
        out["prompt_logps"], out["prompt_lengths"] = reduce(batch.prompt_mask)
    return out
