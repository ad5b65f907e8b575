"""Token rows → padded tensors for one forward over every response of every example.

An example has one prompt and K responses (or K (prompt, response) pairs when prompts differ, DOVE). All B×K
sequences go into one right-padded batch so chosen and rejected (or a whole list) share one forward.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch


@dataclasses.dataclass
class TokenBatch:
    """`input_ids`, `attention_mask`, `response_mask`, `prompt_mask`: [B*K, T]; `valid`: [B, K]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_mask: torch.Tensor
    valid: torch.Tensor
    num_examples: int
    num_responses: int

    def to(self, device: torch.device) -> "TokenBatch":
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return TokenBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in moved.items()})

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def fit_lengths(prompt: Sequence[int], response: Sequence[int], max_length: int, max_prompt_length: int) -> tuple:
    """Keep the end of the prompt and the start of the response (TRL's convention) within the budgets."""
    prompt = list(prompt)[-max_prompt_length:] if len(prompt) > max_prompt_length else list(prompt)
    response = list(response)[: max(0, max_length - len(prompt))]
    return prompt, response


def collate(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    max_length: int = 512,
    max_prompt_length: int = 256,
    num_responses: Optional[int] = None,
    response_prompts: Optional[Sequence[Optional[Sequence[Sequence[int]]]]] = None,
) -> TokenBatch:
    """Build the padded batch. Ragged lists are padded to `num_responses` (default: the longest list) with
    empty, invalid entries; `valid` marks the real ones."""
    k_max = num_responses or max(len(r) for r in responses)
    seqs: List[tuple] = []
    valid = torch.zeros(len(prompts), k_max, dtype=torch.bool)
    for b, (prompt, items) in enumerate(zip(prompts, responses)):
        for k in range(k_max):
            if k < len(items):
                p = prompt
                if response_prompts is not None and response_prompts[b] is not None:
                    p = response_prompts[b][k]
                seqs.append(fit_lengths(p, items[k], max_length, max_prompt_length))
                valid[b, k] = True
            else:
                seqs.append((list(prompt[-1:]) or [pad_id], []))
    width = max(len(p) + len(r) for p, r in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    prompt_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attention[i, :n] = 1
        prompt_mask[i, : len(p)] = True
        response_mask[i, len(p) : n] = True
    return TokenBatch(input_ids, attention, response_mask, prompt_mask, valid, len(prompts), k_max)
