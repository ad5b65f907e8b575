"""Token rows → tensors for one forward over every response of every example.

An example has one prompt and K responses (or K (prompt, response) pairs when prompts differ, DOVE). Two layouts:

- padded (`collate` → `TokenBatch`): one right-padded row per (example, response), the prompt repeated K times;
- packed (`pack` → `PackedBatch`): with a shared prompt one block `[prompt | r1 | … | rK]` per example in which
  each response attends to the prompt and itself only, positions restarting at the prompt's end for each response;
  with packing several blocks per row (block-diagonal attention, positions reset per block), no padding compute.
  Both give the same per-sequence log-probs (tests/model/test_layout.py).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

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

    @property
    def forwarded_tokens(self) -> int:
        return int(self.input_ids.numel())

    def response_lengths(self) -> torch.Tensor:
        """[B, K] response tokens with a prediction (position 0 predicts nothing)."""
        counts = self.response_mask[:, 1:].sum(-1).to(torch.float32)
        return counts.view(self.num_examples, self.num_responses)

    def sequence(self, example: int, response: int) -> Tuple[List[int], List[int]]:
        """(prompt ids, response ids) of one sequence as it is forwarded (after truncation)."""
        row = example * self.num_responses + response
        ids = self.input_ids[row]
        return ids[self.prompt_mask[row]].tolist(), ids[self.response_mask[row]].tolist()


@dataclasses.dataclass(frozen=True)
class Layout:
    """How `build_tokens` lays sequences out (model.shared_prompt / packing / pack_tokens)."""

    shared_prompt: bool = False
    packing: bool = False
    pack_tokens: int = 0  # packed row length; 0 = the longest block of the batch

    @property
    def padded(self) -> bool:
        return not (self.shared_prompt or self.packing)


PADDED = Layout()


@dataclasses.dataclass
class PackedBatch:
    """Blocks of tokens in rows without padding compute. `input_ids`, `position_ids`, `block` (block index in
    the row, −1 = padding), `branch` (0 = prompt, k+1 = response k): [R, T]. Each predicted token is one entry of
    the flat index tensors: `source` (flat [R*T] position whose output predicts it), `label` (its id), `owner`
    (flat B*K index of its sequence); `is_prompt` marks prompt tokens (needed for prompt log-probs only).
    `valid`, `lengths` (response tokens with a prediction): [B, K]."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    block: torch.Tensor
    branch: torch.Tensor
    source: torch.Tensor
    label: torch.Tensor
    owner: torch.Tensor
    is_prompt: torch.Tensor
    valid: torch.Tensor
    lengths: torch.Tensor
    num_examples: int
    num_responses: int
    sequences: List[List[Tuple[List[int], List[int]]]]  # fitted (prompt, response) per example, per response
    num_tokens: int  # tokens as the padded layout counts them: the prompt once per response
    shared_prompt: bool  # blocks hold several responses (else one sequence each: plain causal within a block)
    spans: List[List[Tuple[int, int, int]]]  # per row, per block: (start, end of its causal part, end)

    def to(self, device: torch.device) -> "PackedBatch":
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return PackedBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in moved.items()})

    @property
    def forwarded_tokens(self) -> int:
        return int((self.block >= 0).sum())

    def response_lengths(self) -> torch.Tensor:
        return self.lengths

    def sequence(self, example: int, response: int) -> Tuple[List[int], List[int]]:
        return self.sequences[example][response]

    def attention_mask(self, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """[R, 1, T, T]: query i sees key j ≤ i of its own block that is a prompt token or in its own branch.
        Padding sees itself only (a query that sees nothing gives NaN in SDPA). Non-bool `dtype`: the additive
        form (0 / min) that eager attention adds to its scores."""
        block, branch = self.block, self.branch
        same_block = (block[:, :, None] == block[:, None, :]) & (block[:, None, :] >= 0)
        visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
        length = block.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=block.device).tril()
        mask = same_block & visible & causal
        mask |= torch.eye(length, dtype=torch.bool, device=block.device) & (block[:, :, None] < 0)
        mask = mask.unsqueeze(1)
        if dtype == torch.bool:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


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


def _fitted(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]], max_length: int,
            max_prompt_length: int, k_max: int) -> List[List[Optional[Tuple[List[int], List[int]]]]]:
    """Per example, per response slot: the truncated (prompt, response), or None for a ragged list's empty slot."""
    out = []
    for prompt, items in zip(prompts, responses):
        out.append([fit_lengths(prompt, items[k], max_length, max_prompt_length) if k < len(items) else None
                    for k in range(k_max)])
    return out


def pack(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[Sequence[int]]],
    *,
    layout: Layout,
    pad_id: int,
    max_length: int = 512,
    max_prompt_length: int = 256,
    num_responses: Optional[int] = None,
) -> PackedBatch:
    """The packed layout of what `collate` pads (same truncation, same per-sequence sums). With
    `layout.shared_prompt` a block is one example (its prompt, then each response); otherwise one sequence.
    With `layout.packing` blocks are placed first-fit by decreasing length into rows of `pack_tokens` (at least
    the longest block, so no row is longer than the padded layout's); otherwise one block per row."""
    k_max = num_responses or max(len(r) for r in responses)
    fitted = _fitted(prompts, responses, max_length, max_prompt_length, k_max)
    blocks: List[List[Tuple[int, int, List[int], List[int]]]] = []  # per block: (example, k, prompt, response)
    for b, slots in enumerate(fitted):
        real = [(b, k, *slot) for k, slot in enumerate(slots) if slot is not None]
        blocks += [real] if layout.shared_prompt else [[item] for item in real]
    sizes = [len(block[0][2]) + sum(len(item[3]) for item in block) for block in blocks]
    rows = _place(sizes, max(max(sizes), layout.pack_tokens) if layout.packing else 0)
    width = max(sum(sizes[i] for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    block_ids = torch.full(shape, -1, dtype=torch.long)
    branch = torch.zeros(shape, dtype=torch.long)
    source: List[int] = []
    label: List[int] = []
    owner: List[int] = []
    is_prompt: List[bool] = []
    spans: List[List[Tuple[int, int, int]]] = []
    for r, row in enumerate(rows):
        start = 0
        spans.append([])
        for slot, index in enumerate(row):
            block = blocks[index]
            prompt = block[0][2]
            ids = list(prompt) + [t for item in block for t in item[3]]
            input_ids[r, start:start + len(ids)] = torch.tensor(ids, dtype=torch.long)
            block_ids[r, start:start + len(ids)] = slot
            position_ids[r, start:start + len(prompt)] = torch.arange(len(prompt))
            base, at = r * width + start, start + len(prompt)
            for b, k, _, response in block:
                owner_id = b * k_max + k
                # Prompt tokens 1.. predicted from their predecessor, once per sequence (as the padded layout sums).
                source += range(base, base + len(prompt) - 1)
                label += prompt[1:]
                owner += [owner_id] * (len(prompt) - 1)
                is_prompt += [True] * (len(prompt) - 1)
                n = len(response)
                position_ids[r, at:at + n] = torch.arange(len(prompt), len(prompt) + n)
                branch[r, at:at + n] = k + 1
                # The first response token is predicted by the prompt's last token (none for an empty prompt).
                first = [base + len(prompt) - 1] if prompt and n else []
                sources = first + list(range(r * width + at, r * width + at + n - 1))
                source += sources
                label += response[n - len(sources):]
                owner += [owner_id] * len(sources)
                is_prompt += [False] * len(sources)
                at += n
            # The causal part: the shared prompt, or a whole single sequence.
            spans[r].append((start, start + (len(prompt) if layout.shared_prompt else len(ids)), start + len(ids)))
            start += len(ids)
    valid = torch.tensor([[slot is not None for slot in slots] for slots in fitted])
    lengths = torch.zeros(len(fitted) * k_max)
    response_owner = torch.tensor([o for o, p in zip(owner, is_prompt) if not p], dtype=torch.long)
    lengths.index_add_(0, response_owner, torch.ones(len(response_owner)))
    sequences = [[slot if slot is not None else (list(p[-1:]), []) for slot in slots]
                 for p, slots in zip(prompts, fitted)]
    num_tokens = sum(len(p) + len(r) for slots in sequences for p, r in slots)
    return PackedBatch(input_ids, position_ids, block_ids, branch, torch.tensor(source, dtype=torch.long),
                       torch.tensor(label, dtype=torch.long), torch.tensor(owner, dtype=torch.long),
                       torch.tensor(is_prompt, dtype=torch.bool), valid, lengths.view(len(fitted), k_max),
                       len(fitted), k_max, sequences, num_tokens, layout.shared_prompt, spans)


def _place(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    """Block indices per row: first fit by decreasing size into rows of `capacity` (0 = one block per row)."""
    if capacity <= 0:
        return [[i] for i in range(len(sizes))]
    rows: List[List[int]] = []
    free: List[int] = []
    for i in sorted(range(len(sizes)), key=lambda j: (-sizes[j], j)):
        target = next((r for r, room in enumerate(free) if room >= sizes[i]), None)
        if target is None:
            rows.append([])
            free.append(capacity)
            target = len(rows) - 1
        rows[target].append(i)
        free[target] -= sizes[i]
    return rows


def build_tokens(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[Sequence[int]]],
    *,
    layout: Layout = PADDED,
    pad_id: int,
    max_length: int = 512,
    max_prompt_length: int = 256,
    num_responses: Optional[int] = None,
    response_prompts: Optional[Sequence[Optional[Sequence[Sequence[int]]]]] = None,
) -> "TokenBatch | PackedBatch":
    """`pack` under a non-padded layout, `collate` otherwise and whenever responses have their own prompts (DOVE)."""
    if layout.padded or response_prompts is not None:
        return collate(prompts, responses, pad_id=pad_id, max_length=max_length, max_prompt_length=max_prompt_length,
                       num_responses=num_responses, response_prompts=response_prompts)
    return pack(prompts, responses, layout=layout, pad_id=pad_id, max_length=max_length,
                max_prompt_length=max_prompt_length, num_responses=num_responses)
