"""Frozen text embeddings: the mean of a causal LM's last hidden states over a sequence's tokens.

Shared by the store passes that embed rows (BCO's UDM prompts, ISA rows) and by PAL's frozen encoder, so that
training-time and scoring-time embeddings are computed the same way.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple


def mean_pooler(model_path: str, batch_size: int = 32) -> Tuple[Any, Callable[[Sequence[List[int]]], Any]]:
    """(the model's tokenizer, pool(list of id lists) -> [N, D] float32 mean of the last hidden states)."""
    import torch

    from framework.model.loading import load_causal_lm, load_tokenizer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(model_path)
    encoder = load_causal_lm(model_path).eval().base_model  # the decoder without the LM head

    def pool(sequences: Sequence[List[int]]) -> Any:
        pooled = []
        for first in range(0, len(sequences), batch_size):
            ids = sequences[first : first + batch_size]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
            with torch.no_grad():
                hidden = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            pooled.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))
        return torch.cat(pooled) if pooled else torch.zeros(0, encoder.config.hidden_size)

    return tokenizer, pool


def encode_prompt(tokenizer: Any, prompt: str, is_chat: bool) -> List[int]:
    """A stored prompt's ids under `tokenizer`: chat prompts (JSON messages) through its chat template."""
    import json

    if is_chat and getattr(tokenizer, "chat_template", None):
        # transformers 5 returns a BatchEncoding unless asked for the ids
        return tokenizer.apply_chat_template(json.loads(prompt), add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    return tokenizer(prompt)["input_ids"]


def pair_embeddings(tokenizer: Any, pool: Callable, rows: Sequence[dict], max_length: int) -> Tuple[Any, Any]:
    """([N, D] prompt embeddings, [N, K, D] prompt + response embeddings) of store rows (prompt, prompt_is_chat,
    responses; K responses each), each sequence cut to its last `max_length` tokens."""
    prompts = [encode_prompt(tokenizer, r["prompt"], r["prompt_is_chat"]) for r in rows]
    k = len(rows[0]["responses"]) if rows else 0
    if any(len(r["responses"]) != k for r in rows):
        raise ValueError("pair_embeddings needs the same number of responses in every row")
    flat = [(prompt + tokenizer(text, add_special_tokens=False)["input_ids"])[-max_length:]
            for prompt, row in zip(prompts, rows) for text in row["responses"]]
    responses = pool(flat)
    return pool([p[-max_length:] for p in prompts]), responses.view(len(rows), k, -1)
