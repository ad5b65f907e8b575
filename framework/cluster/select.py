"""RPS, robust preference selection at inference (arXiv 2510.20498; OBJECTIVES.md §8.3), on Ray tasks.

For a requested direction v (objective weights on the simplex), a weights-in-context policy (PRO with
`in_context=true`, whose prompts start with `weights_line`) samples candidates at directions v_k around v;
every candidate is scored by M per-objective reward models (`bt_reward` exports), r(x, y) ∈ R^M, and the
answer is argmax over all candidates of vᵀr. The baseline draws every candidate at v (`radius=0`).

Choices the paper leaves open here (stated, not confirmed):
* the neighbourhood: `directions` points (v first) at angles spread evenly over ±`radius` radians around v
  in the positive orthant, each mapped back to the simplex; for M > 2 objectives the angle turns v in the
  plane of v and a seeded random direction per point. Angles are clipped to the orthant's edges;
* each direction gets `per_direction` samples, so RPS and the baseline score the same number of candidates;
* rewards are the exports' raw scalars, not normalised per objective.
Candidate j of prompt row i at direction d is drawn with seed `seed + 1000·i + d`, so results do not depend on
how rows are split over tasks.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch

from framework.cluster.generate import Prompt


def neighbour_directions(weights: Sequence[float], count: int, radius: float, seed: int = 0) -> List[List[float]]:
    """`count` simplex weight vectors around `weights` (itself first); radius 0 repeats `weights`."""
    v = torch.tensor(weights, dtype=torch.float64)
    v = v / v.norm()
    generator = torch.Generator().manual_seed(seed)
    offsets = sorted((torch.linspace(-radius, radius, count) if count > 1 else torch.zeros(1)).tolist(), key=abs)
    out = []
    for index, angle in enumerate(offsets):
        if len(v) == 2:
            axis = torch.tensor([-v[1], v[0]], dtype=torch.float64)
        else:  # a seeded direction orthogonal to v, per point
            raw = torch.randn(len(v), generator=generator, dtype=torch.float64)
            axis = raw - (raw @ v) * v
            axis = axis / axis.norm().clamp(min=1e-12)
        point = (math.cos(angle) * v + math.sin(angle) * axis).clamp(min=0.0)
        point = point if float(point.sum()) > 0 else v
        out.append((point / point.sum()).tolist())
    return out


class Scorers:
    """The M reward models, each with its own tokenizer; `scores(prompt, chat, texts)` → [N, M]."""

    def __init__(self, paths: Sequence[str]) -> None:
        from framework.model.loading import load_reward_model, load_tokenizer

        self.tokenizers = [load_tokenizer(p) for p in paths]
        self.models = [load_reward_model(p, pad_token_id=t.pad_token_id).eval() for p, t in zip(paths, self.tokenizers)]

    @torch.no_grad()
    def scores(self, prompt: str, chat: bool, texts: Sequence[str]) -> torch.Tensor:
        from framework.cluster.store_passes import _encode_prompt
        from framework.model.batching import collate
        from framework.model.logprobs import sequence_rewards

        columns = []
        for tokenizer, model in zip(self.tokenizers, self.models):
            prompt_ids = _encode_prompt(tokenizer, prompt, chat)
            responses = [[tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]]
            tokens = collate([prompt_ids], responses, pad_id=tokenizer.pad_token_id, max_length=10**6,
                             max_prompt_length=10**6)
            columns.append(sequence_rewards(model, tokens)["rewards"][0].double())
        return torch.stack(columns, -1)


def _select_part(prompts: Sequence[Prompt], first_row: int, *, policy: str, scorers: Sequence[str],
                 names: Sequence[str], weights: Sequence[float], directions: Sequence[Sequence[float]],
                 per_direction: int, max_new_tokens: int, temperature: float, seed: int,
                 max_prompt_length: int) -> List[Dict[str, Any]]:
    """One record per prompt: its candidates, their direction and reward vectors, and the selected one."""
    from framework.cluster.generate import quiet_task
    from framework.cluster.store_passes import _encode_prompt
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.orchestrator import context_prompt_ids
    from framework.model.sampling import sample_continuations

    quiet_task()
    tokenizer, model = load_tokenizer(policy), load_causal_lm(policy).eval()
    judge, v = Scorers(scorers), torch.tensor(weights, dtype=torch.float64)
    out = []
    for offset, (prompt, chat) in enumerate(prompts):
        row = first_row + offset
        prompt_ids = _encode_prompt(tokenizer, prompt, chat)
        texts, origin = [], []
        for d, direction in enumerate(directions):
            ids = context_prompt_ids(tokenizer, names, direction, prompt_ids, max_prompt_length)
            samples = sample_continuations(model, ids, k=per_direction, max_new_tokens=max_new_tokens,
                                           temperature=temperature, seed=seed + 1000 * row + d,
                                           eos_id=tokenizer.eos_token_id)
            texts += [tokenizer.decode(s, skip_special_tokens=True) for s in samples]
            origin += [d] * len(samples)
        rewards = judge.scores(prompt, chat, texts)
        best = int(torch.argmax(rewards @ v))
        out.append({"row": row, "selected": texts[best], "selected_rewards": rewards[best].tolist(),
                    "selected_direction": list(directions[origin[best]]), "utility": float(rewards[best] @ v),
                    "candidates": [{"text": t, "direction": origin[i], "rewards": rewards[i].tolist()}
                                   for i, t in enumerate(texts)]})
    return out


def select(policy: str, scorers: Sequence[str], names: Sequence[str], weights: Sequence[float],
           prompts: Sequence[Prompt], *, directions: int = 5, radius: float = math.pi / 8, per_direction: int = 2,
           max_new_tokens: int = 32, temperature: float = 1.0, seed: int = 0, max_prompt_length: int = 64,
           num_workers: int = 2) -> List[Dict[str, Any]]:
    """RPS over `prompts` on `num_workers` Ray tasks (Ray must be initialised); one record per prompt."""
    import ray

    from framework.cluster.store_passes import _ranges

    if len(scorers) != len(names) or len(weights) != len(names):
        raise ValueError(f"need one scorer and one weight per objective {list(names)}, "
                         f"got {len(scorers)} scorers and {len(weights)} weights")
    total = sum(weights)
    weights = [w / total for w in weights]
    around = neighbour_directions(weights, directions, radius, seed)
    task = ray.remote(num_cpus=1)(_select_part)
    options = dict(policy=policy, scorers=list(scorers), names=list(names), weights=weights, directions=around,
                   per_direction=per_direction, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                   max_prompt_length=max_prompt_length)
    parts = [task.remote(list(prompts[start:end]), start, **options) for start, end in _ranges(len(prompts), num_workers)]
    return [record for part in ray.get(parts) for record in part]
