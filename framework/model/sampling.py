"""Seeded ancestral sampling from a causal LM, one prompt at a time with its K samples as one batch.

Each prompt draws from its own `torch.Generator` seeded with `seed + row`, and its K samples share a batch
with no padding, so a row's samples depend only on (model, prompt, settings, seed, row): never on how rows
are split over workers or which other rows are sampled alongside it.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import torch


@torch.no_grad()
def sample_continuations(model: Any, prompt_ids: Sequence[int], *, k: int, max_new_tokens: int, temperature: float,
                         seed: int, eos_id: int) -> List[List[int]]:
    """K continuations of `prompt_ids`, each cut before its first EOS. temperature 0 = greedy."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    inputs = torch.tensor([list(prompt_ids)] * k, device=device)
    attention = torch.ones_like(inputs)
    past, steps = None, []
    finished = torch.zeros(k, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        out = model(input_ids=inputs, attention_mask=attention, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1].float()
        if temperature > 0:
            chosen = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        else:
            chosen = logits.argmax(-1, keepdim=True)
        chosen[finished] = eos_id
        steps.append(chosen)
        finished |= chosen.squeeze(-1) == eos_id
        if bool(finished.all()):
            break
        inputs, attention = chosen, torch.cat([attention, torch.ones_like(chosen)], -1)
    rows = torch.cat(steps, -1).tolist() if steps else [[] for _ in range(k)]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
