"""Score (prompt, response) pairs with an exported reward model (a `bt_reward` run's `export/`)."""

from __future__ import annotations

from typing import List, Sequence

import torch


def score(model_dir: str, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> List[float]:
    """Scalar rewards, tokenised the way the store does (prompt, then response + EOS, right padding)."""
    from transformers import AutoModelForSequenceClassification

    from framework.model.batching import collate
    from framework.model.loading import load_tokenizer
    from framework.model.logprobs import sequence_rewards
    from framework.model.pal import is_user_judge, score_user

    if is_user_judge(model_dir):  # one user of a PAL export (objective=pal_reward)
        return score_user(model_dir, prompts, responses)
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out: List[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(len(prompts), start + batch_size))
        prompt_ids = [tokenizer(prompts[i])["input_ids"] for i in chunk]
        response_ids = [[tokenizer(responses[i], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
                        for i in chunk]
        tokens = collate(prompt_ids, response_ids, pad_id=tokenizer.pad_token_id, max_length=10**6, max_prompt_length=10**6)
        with torch.no_grad():
            out += sequence_rewards(model, tokens)["rewards"][:, 0].tolist()
    return out
