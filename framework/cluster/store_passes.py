"""Model passes over a store on Ray workers, each writing a new store version:

- `add_reference`: frozen reference log-probs per response (`ref_logps`, `ref_lengths`) + a fingerprint, so
  training can skip the reference model entirely;
- `add_samples`: K self-samples per prompt from a model (`self_samples`, `self_sample_ids`) for D2O;
- `add_aligned_logps`: per-token mean log-probs of each response under M aligned LMs (`aligned_logps`, [K][M]),
  each with its own tokenizer, for PoFT;
- `add_udm_weights`: BCO's density-ratio weights w(x) per row (`udm_weights`) from a prompt classifier;
- `row_embeddings`: mean-pooled hidden states per row (prompt + each response), for ISA subsampling;
- `add_scores`: a `bt_reward` export's score of every response as one more objective of multi rows (pairwise
  rows become multi rows ["preference", NAME]), e.g. MODPO's margin rewards.

Rows are split into contiguous ranges, one Ray task per range; results come back in row order.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)


def _ranges(num_rows: int, parts: int) -> List[tuple]:
    size = math.ceil(num_rows / max(1, parts))
    return [(start, min(num_rows, start + size)) for start in range(0, num_rows, size)]


def _map_rows(store_path: str, worker: Callable[..., List[Any]], options: Dict[str, Any], num_workers: int,
              use_gpu: bool = False) -> List[Any]:
    """Run `worker(store_path, start, end, **options)` as Ray tasks over row ranges; concatenate in order."""
    import ray
    from tqdm import tqdm

    from framework.store import open_store

    num_rows = open_store(store_path).num_rows
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(worker)
    pending = {task.remote(store_path, start, end, **options): i for i, (start, end) in enumerate(_ranges(num_rows, num_workers))}
    results: Dict[int, List[Any]] = {}
    with tqdm(total=len(pending), desc=worker.__name__.strip("_"), unit="part") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
            bar.update(1)
    return [value for i in sorted(results) for value in results[i]]


def _reference_part(store_path: str, start: int, end: int, *, model_path: str, max_length: int,
                    max_prompt_length: int, batch_size: int, dtype: str, packed: bool = True) -> List[tuple]:
    """(logps, lengths) per row, computed exactly as the trainer's live reference does (in the shared-prompt,
    packed layout unless `packed` is false or the model's attention takes no custom mask)."""
    import torch

    from framework.engine.batches import BatchBuilder
    from framework.engine.step import stats
    from framework.model.batching import PADDED, Layout
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.logprobs import supports_packed
    from framework.store import open_store

    torch.set_num_threads(1)
    store = open_store(store_path)
    model = load_causal_lm(model_path, dtype).eval()
    layout = Layout(shared_prompt=True, packing=True) if packed and supports_packed(model) else PADDED
    builder = BatchBuilder(load_tokenizer(model_path).pad_token_id, max_length, max_prompt_length, "pairwise", False,
                           layout=layout)
    out: List[tuple] = []
    for first in range(start, end, batch_size):
        rows = list(range(first, min(end, first + batch_size)))
        batch = builder.build(store.take(rows), [False] * len(rows))
        with torch.no_grad():
            s = stats(model, batch.tokens)
        for i in range(len(rows)):
            valid = batch.tokens.valid[i]
            out.append((s.logps[i][valid].double().tolist(), s.lengths[i][valid].int().tolist()))
    return out


def add_reference(store_path: str, model_path: str, *, max_length: int = 128, max_prompt_length: int = 64,
                  batch_size: int = 16, num_workers: int = 2, dtype: str = "fp32", packed: bool = True) -> Any:
    """Write a new version with per-response reference log-probs, tagged with the reference fingerprint."""
    import pyarrow as pa

    from framework.cluster.reference import reference_fingerprint
    from framework.store import add_columns, open_store

    version = open_store(store_path)
    results = _map_rows(str(version.path), _reference_part, dict(model_path=model_path, max_length=max_length,
                        max_prompt_length=max_prompt_length, batch_size=batch_size, dtype=dtype, packed=packed),
                       num_workers)
    info = {"model": model_path, "fingerprint": reference_fingerprint(model_path, max_length, max_prompt_length),
            "max_length": max_length, "max_prompt_length": max_prompt_length, "dtype": dtype}
    columns = {"ref_logps": pa.array([r[0] for r in results], pa.list_(pa.float64())),
               "ref_lengths": pa.array([r[1] for r in results], pa.list_(pa.int32()))}
    return add_columns(version, columns, note=f"reference log-probs from {model_path}", extra_manifest={"reference": info})


def _samples_part(store_path: str, start: int, end: int, *, model_path: str, k: int, max_new_tokens: int,
                  temperature: float, seed: int, max_prompt_length: int) -> List[tuple]:
    """K sampled continuations per prompt: (texts, token ids with EOS), drawn as `alignray generate` draws."""
    import torch

    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.sampling import sample_continuations
    from framework.store import open_store

    torch.set_num_threads(1)
    store = open_store(store_path)
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path).eval()
    eos = tokenizer.eos_token_id
    out: List[tuple] = []
    prompts = store.take(list(range(start, end)), columns=["prompt_ids"]).column("prompt_ids").to_pylist()
    for offset, prompt in enumerate(prompts):
        # per-row seed: the samples do not depend on the task split
        rows = sample_continuations(model, prompt[-max_prompt_length:], k=k, max_new_tokens=max_new_tokens,
                                    temperature=temperature, seed=seed + start + offset, eos_id=eos)
        rows = [[t for t in row if t != tokenizer.pad_token_id] or [eos] for row in rows]
        out.append(([tokenizer.decode(row, skip_special_tokens=True) for row in rows],
                    [row + ([eos] if row[-1] != eos else []) for row in rows]))
    return out


def add_samples(store_path: str, model_path: str, *, k: int = 4, max_new_tokens: int = 32, temperature: float = 1.0,
                seed: int = 0, max_prompt_length: int = 64, num_workers: int = 2) -> Any:
    """Write a new version with K self-samples per prompt (D2O's y_1..y_K ~ π_init)."""
    import pyarrow as pa

    from framework.model.loading import model_fingerprint
    from framework.store import add_columns, open_store

    version = open_store(store_path)
    results = _map_rows(str(version.path), _samples_part, dict(model_path=model_path, k=k, max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed, max_prompt_length=max_prompt_length), num_workers)
    columns = {"self_samples": pa.array([r[0] for r in results], pa.list_(pa.string())),
               "self_sample_ids": pa.array([r[1] for r in results], pa.list_(pa.list_(pa.int32())))}
    info = {"model": model_path, "fingerprint": model_fingerprint(model_path), "k": k, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "seed": seed}
    return add_columns(version, columns, note=f"{k} self-samples per prompt from {model_path}",
                       extra_manifest={"self_samples": info})


def _aligned_part(store_path: str, start: int, end: int, *, model_paths: Sequence[str], batch_size: int) -> List[list]:
    """Per row, per response: [mean log-prob under each aligned model], each model with its own tokenizer."""
    import torch

    from framework.engine.step import stats
    from framework.model.batching import collate
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.store import open_store

    torch.set_num_threads(1)
    table = open_store(store_path).take(list(range(start, end)), columns=["prompt", "prompt_is_chat", "responses"])
    rows = table.to_pylist()
    per_model: List[List[List[float]]] = []
    for path in model_paths:
        tokenizer, model = load_tokenizer(path), load_causal_lm(path).eval()
        values: List[List[float]] = []
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            prompts = [_encode_prompt(tokenizer, r["prompt"], r["prompt_is_chat"]) for r in chunk]
            responses = [[tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                          for t in r["responses"]] for r in chunk]
            tokens = collate(prompts, responses, pad_id=tokenizer.pad_token_id, max_length=10**6, max_prompt_length=10**6)
            with torch.no_grad():
                mean = stats(model, tokens).mean_logps
            values += [mean[i][tokens.valid[i]].double().tolist() for i in range(len(chunk))]
        per_model.append(values)
    return [[[per_model[m][i][k] for m in range(len(model_paths))] for k in range(len(rows[i]["responses"]))]
            for i in range(len(rows))]


def _encode_prompt(tokenizer: Any, prompt: str, is_chat: bool) -> List[int]:
    if is_chat and getattr(tokenizer, "chat_template", None):
        # transformers 5 returns a BatchEncoding unless asked for the ids
        return tokenizer.apply_chat_template(json.loads(prompt), add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    return tokenizer(prompt)["input_ids"]


def add_aligned_logps(store_path: str, model_paths: Sequence[str], *, batch_size: int = 16, num_workers: int = 2) -> Any:
    """Write a new version with `aligned_logps` [K][M] (PoFT's ℓ̄_j(y), precomputed once)."""
    import pyarrow as pa

    from framework.model.loading import model_fingerprint
    from framework.store import add_columns, open_store

    version = open_store(store_path)
    results = _map_rows(str(version.path), _aligned_part, dict(model_paths=list(model_paths), batch_size=batch_size), num_workers)
    info = {"models": list(model_paths), "fingerprints": [model_fingerprint(p) for p in model_paths]}
    return add_columns(version, {"aligned_logps": pa.array(results, pa.list_(pa.list_(pa.float64())))},
                       note=f"aligned-LM mean log-probs from {len(model_paths)} models", extra_manifest={"aligned_lms": info})


def _prompt_embedder(model_path: str, max_prompt_length: int, batch_size: int) -> Callable[[Any, Sequence[int]], Any]:
    """Load the model once; return embed(store, rows) -> [len(rows), D] float32: the mean of the model's last
    hidden states over each prompt's tokens (tokenised by the embedding model's own tokenizer, its last
    `max_prompt_length` tokens; identical prompts are embedded once)."""
    from framework.model.embedding import mean_pooler

    tokenizer, pool = mean_pooler(model_path, batch_size)

    def embed(store: Any, rows: Sequence[int]) -> Any:
        keys = [(r["prompt"], r["prompt_is_chat"]) for r in store.take(list(rows), columns=["prompt", "prompt_is_chat"]).to_pylist()]
        unique = list(dict.fromkeys(keys))
        pooled = pool([_encode_prompt(tokenizer, p, chat)[-max_prompt_length:] for p, chat in unique])
        index = {key: i for i, key in enumerate(unique)}
        return pooled[[index[key] for key in keys]]

    return embed


def _row_embedding_part(store_path: str, start: int, end: int, *, model_path: str, max_length: int,
                        batch_size: int) -> List[Any]:
    """Per row in [start, end): [mean_k e_k, e_first − e_last], e_k = mean-pooled hidden states of prompt +
    response k (the model's own tokenizer, cut to its last `max_length` tokens). Used by ISA subsampling."""
    import torch

    from framework.store import open_store

    from framework.model.embedding import mean_pooler

    tokenizer, pool = mean_pooler(model_path, batch_size)
    rows = open_store(store_path).take(list(range(start, end)), columns=["prompt", "prompt_is_chat", "responses"]).to_pylist()
    out: List[Any] = []
    for first in range(0, len(rows), 256):  # a chunk at a time: memory does not grow with the range
        chunk = rows[first : first + 256]
        texts = [(_encode_prompt(tokenizer, r["prompt"], r["prompt_is_chat"]), r["responses"]) for r in chunk]
        flat = [(prompt + tokenizer(t, add_special_tokens=False)["input_ids"])[-max_length:] for prompt, rs in texts for t in rs]
        pooled, cursor = pool(flat), 0
        for _, responses in texts:
            e = pooled[cursor : cursor + len(responses)]
            cursor += len(responses)
            out.append(torch.cat([e.mean(0), e[0] - e[-1]]).numpy())
    return out


def row_embeddings(store_path: str, model_path: str, *, max_length: int = 128, batch_size: int = 32,
                   num_workers: int = 2) -> Any:
    """[N, 2D] float32 row embeddings of a store version (see `_row_embedding_part`), in row order."""
    import numpy as np

    rows = _map_rows(store_path, _row_embedding_part, dict(model_path=model_path, max_length=max_length,
                     batch_size=batch_size), num_workers)
    return np.stack(rows)


def _udm_sample_part(store_path: str, start: int, end: int, *, sample: Sequence[int], **embedding: Any) -> List[Any]:
    """Embeddings of the sampled rows that fall in [start, end), in row order."""
    from framework.store import open_store

    rows = [i for i in sample if start <= i < end]
    if not rows:
        return []
    # Clones: a row view would pickle the whole batch's storage.
    return [row.clone() for row in _prompt_embedder(**embedding)(open_store(store_path), rows)]


def _udm_weight_part(store_path: str, start: int, end: int, *, classifier: Any, min_ratio: float, max_ratio: float,
                     **embedding: Any) -> List[float]:
    """w(x) for every row in [start, end), embedded a chunk at a time so memory does not grow with the range."""
    from framework.objectives._udm import density_ratio_weights
    from framework.store import open_store

    store, embed = open_store(store_path), _prompt_embedder(**embedding)
    weights: List[float] = []
    for first in range(start, end, 1024):
        embeddings = embed(store, range(first, min(end, first + 1024)))
        weights += density_ratio_weights(classifier, embeddings, min_ratio, max_ratio).tolist()
    return weights


def udm_sample(version: Any, sample_size: int, seed: int) -> tuple:
    """Up to `sample_size` row indices per class (desirable, undesirable), drawn with `seed`; refuses data
    that is not binary or holds one class only."""
    import random

    from framework.errors import UserError
    from framework.store import StoreError

    if sample_size < 1:
        raise UserError(f"the UDM sample size must be >= 1, got {sample_size}", "pass --sample-size 1024 (the default)")
    labels = version.table(columns=["label"]).column("label").to_pylist()
    if not labels or any(label is None for label in labels):
        raise StoreError(f"UDM weights need binary feedback (a label per row), but store {version.path} is "
                         f"{version.kind!r}", "build the store from prompt/completion/label rows (--kind binary)")
    classes = [[i for i, label in enumerate(labels) if label == wanted] for wanted in (True, False)]
    if not all(classes):
        raise StoreError(f"UDM needs desirable and undesirable rows, but store {version.path} has only "
                         f"{'desirable' if classes[0] else 'undesirable'} ones", "add rows of the other class")
    rng = random.Random(seed)
    return tuple(sorted(rng.sample(rows, min(sample_size, len(rows)))) for rows in classes)


def add_udm_weights(store_path: str, model_path: str, *, sample_size: int = 1024, seed: int = 0,
                    max_prompt_length: int = 64, batch_size: int = 32, min_ratio: float = 0.5, max_ratio: float = 10.0,
                    num_workers: int = 2) -> Any:
    """Write a new version with BCO's UDM weights `udm_weights` = clip(p/(1 − p), min_ratio, max_ratio) per row.

    p = P(desirable | x) from a balanced logistic regression on mean-pooled prompt embeddings of `model_path`,
    fitted on up to `sample_size` prompts per class. Two passes keep the driver's memory at one float per row:
    the sampled rows' embeddings, then every row's weight under the fitted classifier (sampled rows are embedded
    twice). The manifest's "udm" entry records the classifier's balanced accuracy on its sample, the sample
    sizes, the model and its fingerprint, and the clip bounds.
    """
    import pyarrow as pa
    import torch

    from framework.model.loading import model_fingerprint
    from framework.objectives._udm import fit_udm_classifier
    from framework.store import add_columns, open_store

    version = open_store(store_path)
    desirable, undesirable = udm_sample(version, sample_size, seed)
    embedding = dict(model_path=model_path, max_prompt_length=max_prompt_length, batch_size=batch_size)
    sample = sorted(desirable + undesirable)
    vectors = dict(zip(sample, _map_rows(str(version.path), _udm_sample_part, dict(sample=sample, **embedding), num_workers)))
    fit_d, fit_u = torch.stack([vectors[i] for i in desirable]), torch.stack([vectors[i] for i in undesirable])
    classifier = fit_udm_classifier(fit_d, fit_u)
    weights = _map_rows(str(version.path), _udm_weight_part, dict(classifier=classifier, min_ratio=min_ratio,
                        max_ratio=max_ratio, **embedding), num_workers)
    info = {"model": model_path, "fingerprint": model_fingerprint(model_path), "accuracy": classifier.accuracy(fit_d, fit_u),
            "sample_desirable": len(desirable), "sample_undesirable": len(undesirable), "seed": seed,
            "min_ratio": min_ratio, "max_ratio": max_ratio, "max_prompt_length": max_prompt_length,
            "weight_min": min(weights), "weight_max": max(weights)}
    return add_columns(version, {"udm_weights": pa.array(weights, pa.float64())},
                       note=f"UDM weights from a prompt classifier on {model_path} (accuracy {info['accuracy']:.3f})",
                       extra_manifest={"udm": info})


def check_add_scores(version: Any, model_path: str, name: str, replace: bool) -> None:
    """Refuse, before any model runs: rows other than pairwise/multi, an empty or (without `replace`) existing
    objective name, and a model that is not a reward model (a sequence-classification model with one scalar
    output, as a `bt_reward` export is: a causal LM would get a fresh random head and score noise)."""
    from transformers import AutoConfig

    from framework.errors import UserError
    from framework.model.loading import check_model_source
    from framework.store.extend import check_new_objective

    check_new_objective(version, name, replace)
    check_model_source(model_path, "--reward-model")
    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise UserError(f"--reward-model={model_path}: unreadable config ({err})",
                        "re-save the model with save_pretrained") from None
    architectures = ", ".join(config.architectures or []) or "no architecture"
    if config.num_labels != 1 or "ForSequenceClassification" not in architectures:
        raise UserError(f"--reward-model={model_path}: not a reward model export ({architectures}, {config.num_labels} "
                        "labels; a scalar sequence-classification head is needed)",
                        "train one with `alignray train objective=bt_reward` and pass its <output_dir>/export")


def _scores_part(store_path: str, start: int, end: int, *, model_path: str, name: str, max_length: int,
                 max_prompt_length: int, batch_size: int) -> List[dict]:
    """The rows in [start, end) as multi rows with the reward model's score of each response as objective `name`.
    Texts are tokenised by the reward model's own tokenizer (prompt, then response + EOS, as the store does)."""
    import torch

    from framework.model.batching import collate
    from framework.model.loading import load_reward_model, load_tokenizer
    from framework.model.logprobs import sequence_rewards
    from framework.store import open_store
    from framework.store.extend import OBJECTIVE_INPUT_COLUMNS, OBJECTIVE_OUTPUT_COLUMNS, with_objective

    torch.set_num_threads(1)
    store, tokenizer = open_store(store_path), load_tokenizer(model_path)
    model = load_reward_model(model_path, pad_token_id=tokenizer.pad_token_id).eval()
    out: List[dict] = []
    for first in range(start, end, batch_size):
        rows = store.take(list(range(first, min(end, first + batch_size))), columns=OBJECTIVE_INPUT_COLUMNS).to_pylist()
        prompts = [_encode_prompt(tokenizer, r["prompt"], r["prompt_is_chat"]) for r in rows]
        own_prompts = [[_encode_prompt(tokenizer, p, r["prompt_is_chat"]) for p in r["response_prompts"]]
                       if r["response_prompts"] else None for r in rows]
        responses = [[tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in r["responses"]]
                     for r in rows]
        tokens = collate(prompts, responses, pad_id=tokenizer.pad_token_id, max_length=max_length,
                         max_prompt_length=max_prompt_length, response_prompts=own_prompts)
        with torch.no_grad():
            rewards = sequence_rewards(model, tokens)["rewards"].double().tolist()
        for row, reward in zip(rows, rewards):
            converted = with_objective(row, name, reward)
            out.append({column: converted[column] for column in OBJECTIVE_OUTPUT_COLUMNS})
    return out


def add_scores(store_path: str, model_path: str, name: str, *, replace: bool = False, max_length: int = 128,
               max_prompt_length: int = 64, batch_size: int = 16, num_workers: int = 2) -> Any:
    """Write a new version whose rows are multi rows carrying the reward model's score of each response as
    objective `name` (see `framework.store.extend.with_objective`); `kind` becomes "multi" and row ids are
    recomputed. An existing objective `name` is an error unless `replace`. Sequences are cut as training cuts
    them (`max_length`, `max_prompt_length`: use the values the reward model was trained with). The manifest's
    "reward_scores" maps each added objective to its model, the model's fingerprint and the cut lengths."""
    from framework.model.loading import model_fingerprint
    from framework.store import add_columns, open_store
    from framework.store.extend import OBJECTIVE_OUTPUT_COLUMNS

    version = open_store(store_path)
    check_add_scores(version, model_path, name, replace)
    rows = _map_rows(str(version.path), _scores_part, dict(model_path=model_path, name=name, max_length=max_length,
                     max_prompt_length=max_prompt_length, batch_size=batch_size), num_workers)
    columns = {column: [row[column] for row in rows] for column in OBJECTIVE_OUTPUT_COLUMNS}
    info = {"model": model_path, "fingerprint": model_fingerprint(model_path), "max_length": max_length,
            "max_prompt_length": max_prompt_length, "from_version": version.version, "from_kind": version.kind}
    manifest = {"kind": "multi", "kinds": {"multi": version.num_rows},
                "reward_scores": {**version.manifest.get("reward_scores", {}), name: info}}
    return add_columns(version, columns, note=f"objective {name!r} scored by the reward model {model_path}",
                       extra_manifest=manifest, replace_base=OBJECTIVE_OUTPUT_COLUMNS)
