"""Sampling on Ray workers: `alignray generate`, the judge comparison of `alignray eval` and (through
`framework.model.sampling`) D2O's self-sample pass.

Prompts are split into contiguous ranges, one Ray task per range. Row i is sampled with seed `seed + i`
(see `framework.model.sampling`), so the output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from framework.errors import UserError

Prompt = Tuple[str, bool]  # (text, or JSON chat messages when the flag is set)


def read_prompts(source: str) -> List[Prompt]:
    """Prompts of a store, or of any raw file `alignray store build` reads (prompt-only rows too), in row order."""
    from framework.data_prep import is_store
    from framework.store import open_store

    if is_store(source):
        table = open_store(source).table(columns=["prompt", "prompt_is_chat"]).to_pylist()
        prompts = [(row["prompt"], bool(row["prompt_is_chat"])) for row in table]
    else:
        prompts = [p for p in map(_raw_prompt, _raw_rows(source)) if p is not None]
    if not prompts:
        raise UserError(f"{source}: no usable prompts (no row has a prompt, or a prompt/chosen/rejected pair)",
                        "pass JSONL/Parquet rows with a `prompt` field, or a store directory")
    return prompts


def _raw_rows(source: str) -> List[Any]:
    from framework.store.sources import read_rows

    if not Path(source).exists():
        raise UserError(f"{source}: no such file or directory", "pass JSONL(.gz/.zst), Parquet, a dataset or a store")
    return [row.value for row in read_rows(source)]


def _raw_prompt(value: Any) -> Any:
    from framework.store.normalize import Reject, is_chat, normalise, parse_raw

    example = normalise(value)
    if not isinstance(example, Reject):
        return example["prompt"], bool(example["prompt_is_chat"])
    row = parse_raw(value)
    prompt = row.get("prompt") if isinstance(row, dict) else None
    if isinstance(prompt, str) and prompt.strip():
        return prompt, False
    if isinstance(prompt, list) and prompt and is_chat(prompt):
        return json.dumps(prompt, ensure_ascii=False), True
    return None


def quiet_task() -> None:
    """In a Ray task: one thread (tasks share the cores) and no per-load progress bars in the driver's log."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()


def _generate_part(prompts: Sequence[Prompt], first_row: int, *, model_path: str, k: int, max_new_tokens: int,
                   temperature: float, seed: int, max_prompt_length: int) -> List[List[str]]:
    """K sampled texts per prompt; prompt `i` of this part is row `first_row + i`."""
    from framework.cluster.store_passes import _encode_prompt
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.sampling import sample_continuations

    quiet_task()
    tokenizer, model = load_tokenizer(model_path), load_causal_lm(model_path).eval()
    out = []
    for offset, (prompt, chat) in enumerate(prompts):
        ids = _encode_prompt(tokenizer, prompt, chat)[-max_prompt_length:]
        samples = sample_continuations(model, ids, k=k, max_new_tokens=max_new_tokens, temperature=temperature,
                                       seed=seed + first_row + offset, eos_id=tokenizer.eos_token_id)
        out.append([tokenizer.decode(s, skip_special_tokens=True) for s in samples])
    return out


def generate(model_path: str, prompts: Sequence[Prompt], *, k: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, seed: int = 0, max_prompt_length: int = 256, num_workers: int = 2) -> List[List[str]]:
    """K samples per prompt from `model_path`, on `num_workers` Ray tasks (Ray must be initialised)."""
    import ray

    from framework.cluster.store_passes import _ranges

    task = ray.remote(num_cpus=1)(_generate_part)
    options = dict(model_path=model_path, k=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                   max_prompt_length=max_prompt_length)
    parts = [task.remote(list(prompts[start:end]), start, **options)
             for start, end in _ranges(len(prompts), num_workers)]
    return [samples for part in ray.get(parts) for samples in part]


def write_jsonl_atomic(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    """Write rows to a temp file beside `path`, then rename: a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generation_rows(prompts: Sequence[Prompt], samples: Sequence[List[str]], settings: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The JSONL rows of `alignray generate`: row index, prompt (chat prompts as messages), samples, settings."""
    return [{"row": i, "prompt": json.loads(text) if chat else text, "samples": list(row), "settings": settings}
            for i, ((text, chat), row) in enumerate(zip(prompts, samples))]
