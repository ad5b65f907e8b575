"""`alignray eval` driver side: resolve the inputs, score every response of every row on Ray tasks, reduce the
scores to the figures of `framework.engine.ranking`, and (with a judge) compare generations.

Rows are scored as training's held-out evaluation scores them: the store's token ids, cut to `max_length` /
`max_prompt_length` the way `BatchBuilder` cuts them, log-probs summed over the response given the prompt.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from framework.engine import ranking
from framework.errors import UserError


def resolve_model(path: str, key: str) -> str:
    """`demo` names the built-in demo model (the base model of `make run`); anything else is checked."""
    from framework.model.loading import check_model_source

    if path == "demo":
        from framework.model.demo import demo_model_path

        return demo_model_path()
    check_model_source(path, key)
    return path


def check_same_tokenizer(model_path: str, other_path: str, key: str) -> None:
    """Log-probs of two models are comparable only over the same token ids."""
    from framework.model.loading import load_tokenizer

    mine, theirs = load_tokenizer(model_path), load_tokenizer(other_path)
    if mine.get_vocab() != theirs.get_vocab() or mine.eos_token_id != theirs.eos_token_id:
        raise UserError(f"{key}={other_path}: its tokenizer differs from the model's ({model_path}; vocabulary "
                        f"{len(theirs)} vs {len(mine)} tokens)", "evaluate against a reference with the same tokenizer")


def prepare_stores(sources: Sequence[str], model_path: str, work_dir: Path, max_length: int,
                   max_prompt_length: int) -> List[str]:
    """A store version per source: stores as they are (if tokenized like the model), raw files (and `demo`,
    the held-out pairs of `make run`) built into `work_dir` with the model's tokenizer."""
    from framework import demo_data
    from framework.config import DataConfig
    from framework.data_prep import _check_sources, is_store
    from framework.store import open_store

    stores = []
    for index, source in enumerate(sources):
        if source == "demo":  # the rows and seed `alignray train` uses for its demo held-out split
            rows = demo_data.pairs(DataConfig().demo_eval_rows, seed=2)
            source = str(demo_data.write_jsonl(rows, work_dir / "demo-pairwise-eval.jsonl"))
        _check_sources("--data", source)
        if is_store(source):
            version = open_store(source)
            _check_store_tokenizer(version, model_path, source)
        else:
            version = _build(source, work_dir / f"store-{index}", model_path, max_length, max_prompt_length)
        if version.num_rows == 0:
            raise UserError(f"--data {source}: no rows to evaluate", "pass a store or file with preference rows")
        stores.append(str(version.path))
    return stores


def _build(source: str, out: Path, model_path: str, max_length: int, max_prompt_length: int) -> Any:
    """A raw file tokenized into a scratch store; a file without one usable row is refused without naming the
    scratch directory (it is removed)."""
    from framework.store import StoreError, build_store

    try:
        return build_store([source], str(out), tokenizer=model_path, num_proc=1, max_prompt_tokens=max_prompt_length,
                           max_response_tokens=max_length, progress=False)
    except StoreError as err:
        if not (out / "rejects.failed-build.jsonl").exists():
            raise
        raise UserError(f"--data {source}: no usable rows ({err.message.split('; every row')[0]})",
                        f"see each row's reason with `alignray store build {source} --out DIR`") from None


def _check_store_tokenizer(version: Any, model_path: str, source: str) -> None:
    from framework.store.tokenize import tokenizer_fingerprint

    recorded = version.manifest.get("tokenizer", {})
    if recorded.get("sha256") == tokenizer_fingerprint(model_path)["sha256"]:
        return
    if recorded.get("path") and Path(recorded["path"]).is_dir():
        check_same_tokenizer(model_path, recorded["path"], "--data")
        return
    raise UserError(f"--data {source}: the store was tokenized with {recorded.get('path')}, not with the model's "
                    f"tokenizer", f"rebuild it with `alignray store build ... --tokenizer {model_path}`")


def _score_part(store_path: str, start: int, end: int, *, model_path: str, reference_path: Optional[str],
                max_length: int, max_prompt_length: int, batch_size: int) -> List[Dict[str, Any]]:
    """Per row: summed response log-probs, response token counts and (with a reference) its log-probs."""
    from framework.cluster.generate import quiet_task
    from framework.engine.batches import BatchBuilder
    from framework.engine.step import stats
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.store import open_store

    quiet_task()
    store = open_store(store_path)
    models = {"logps": load_causal_lm(model_path).eval()}
    if reference_path:
        models["ref_logps"] = load_causal_lm(reference_path).eval()
    builder = BatchBuilder(load_tokenizer(model_path).pad_token_id, max_length, max_prompt_length, "pairwise", False)
    out: List[Dict[str, Any]] = []
    for first in range(start, end, batch_size):
        rows = list(range(first, min(end, first + batch_size)))
        tokens = builder.build(store.take(rows), [False] * len(rows)).tokens
        with torch.no_grad():
            results = {key: stats(model, tokens) for key, model in models.items()}
        for i in range(len(rows)):
            valid = tokens.valid[i]
            row = {key: s.logps[i][valid].double().tolist() for key, s in results.items()}
            row["lengths"] = results["logps"].lengths[i][valid].tolist()
            out.append(row)
    return out


def score_rows(store_path: str, model_path: str, reference_path: Optional[str], *, max_length: int,
               max_prompt_length: int, num_workers: int, batch_size: int = 16) -> List[Dict[str, Any]]:
    """Each row's scores joined with its labels (kind, scores, label, objectives), on Ray tasks."""
    from framework.cluster.store_passes import _map_rows
    from framework.store import open_store

    scored = _map_rows(store_path, _score_part, dict(model_path=model_path, reference_path=reference_path,
                       max_length=max_length, max_prompt_length=max_prompt_length, batch_size=batch_size), num_workers)
    labels = open_store(store_path).table(columns=["kind", "prompt", "prompt_is_chat", "scores", "label",
                                                   "objective_names", "objective_scores"]).to_pylist()
    return [dict(label, **score) for label, score in zip(labels, scored)]


def _pairs(rows: Sequence[Dict[str, Any]], alpha: float) -> Dict[str, Any]:
    """Every ordered pair: pairwise/multi rows as stored (chosen first); ranked lists as each pair of responses
    with different scores, the higher-scored first. α from the score gap where scores order the pair."""
    policy, lengths, reference, gaps = [], [], [], []
    for row in rows:
        if row["kind"] == "binary":
            continue
        scores = row["scores"] if row["kind"] in ("pairwise", "ranked") else None
        picks = [(0, 1)]
        if row["kind"] == "ranked":
            order = sorted(range(len(row["logps"])), key=lambda i: -row["scores"][i])
            picks = [(a, b) for x, a in enumerate(order) for b in order[x + 1:] if row["scores"][a] > row["scores"][b]]
        for a, b in picks:
            policy.append([row["logps"][a], row["logps"][b]])
            lengths.append([row["lengths"][a], row["lengths"][b]])
            reference.append([row["ref_logps"][a], row["ref_logps"][b]] if "ref_logps" in row else None)
            gaps.append([scores[a], scores[b]] if scores else [float("nan")] * 2)
    gaps_tensor = torch.tensor(gaps, dtype=torch.float64).view(-1, 2)
    return {"policy": torch.tensor(policy, dtype=torch.float64).view(-1, 2),
            "lengths": torch.tensor(lengths, dtype=torch.float64).view(-1, 2),
            "reference": torch.tensor(reference, dtype=torch.float64).view(-1, 2) if reference and reference[0] else None,
            "alpha": ranking.pair_alpha(gaps_tensor[:, 0], gaps_tensor[:, 1], len(gaps), alpha)}


def _objective_metrics(rows: Sequence[Dict[str, Any]], beta: float, alpha: float) -> Dict[str, Any]:
    """Multi rows: the pair ordered by each objective's scores (ties left out), metrics per objective."""
    multi = [r for r in rows if r["kind"] == "multi" and r["objective_scores"]]
    out = {}
    for name in dict.fromkeys(n for row in multi for n in row["objective_names"]):
        ordered = []
        for row in (r for r in multi if name in r["objective_names"]):
            m = row["objective_names"].index(name)
            gap = row["objective_scores"][0][m] - row["objective_scores"][1][m]
            if gap:
                flip = (lambda v: v) if gap > 0 else (lambda v: v[::-1])
                ordered.append({**row, "kind": "pairwise", "scores": None, "logps": flip(row["logps"]),
                                "lengths": flip(row["lengths"]),
                                **({"ref_logps": flip(row["ref_logps"])} if "ref_logps" in row else {})})
        pairs = _pairs(ordered, alpha)
        out[name] = ranking.pairwise_metrics(pairs["policy"], pairs["lengths"], pairs["reference"], beta, pairs["alpha"])
    return out


def _binary_metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Separation of desirable from undesirable completions (AUC) by summed, per-token and implicit-reward score."""
    binary = [r for r in rows if r["kind"] == "binary"]
    labels = torch.tensor([bool(r["label"]) for r in binary])
    logps = torch.tensor([r["logps"][0] for r in binary], dtype=torch.float64)
    lengths = torch.tensor([max(r["lengths"][0], 1) for r in binary], dtype=torch.float64)
    out = {"examples": len(binary), "desirable": int(labels.sum()), "auc": ranking.auc(logps, labels),
           "auc_mean": ranking.auc(logps / lengths, labels)}
    if binary and "ref_logps" in binary[0]:
        out["reward_auc"] = ranking.auc(logps - torch.tensor([r["ref_logps"][0] for r in binary]), labels)
    return out


def metrics(rows: Sequence[Dict[str, Any]], beta: float, alpha: float) -> Dict[str, Any]:
    """All figures of `alignray eval` from scored rows; refuses data with nothing to evaluate."""
    pairs = _pairs(rows, alpha)
    kinds = {r["kind"] for r in rows}
    if not len(pairs["policy"]) and "binary" not in kinds:
        raise UserError("the data has no usable rows: no pair with a preferred response and no labelled completion",
                        "pass pairwise, ranked (with distinct scores), multi or binary rows")
    out = ranking.pairwise_metrics(pairs["policy"], pairs["lengths"], pairs["reference"], beta, pairs["alpha"])
    out["by_length"] = _accuracy_by_length(pairs)
    if "ranked" in kinds:
        ranked = [r for r in rows if r["kind"] == "ranked"]
        out["listwise"] = ranking.listwise_metrics([torch.tensor(r["logps"]) for r in ranked],
                                                   [torch.tensor(r["scores"]) for r in ranked])
    if "binary" in kinds:
        out["binary"] = _binary_metrics(rows)
    if "multi" in kinds:
        out["objectives"] = _objective_metrics(rows, beta, alpha)
    out["margins"] = (pairs["policy"][:, 0] - pairs["policy"][:, 1]).tolist()
    if pairs["reference"] is not None:
        ref_margin = pairs["reference"][:, 0] - pairs["reference"][:, 1]
        out["reward_margins"] = (beta * (pairs["policy"][:, 0] - pairs["policy"][:, 1] - ref_margin)).tolist()
    return out


def _accuracy_by_length(pairs: Dict[str, Any], bins: int = 4) -> List[Dict[str, float]]:
    """Ranking accuracy per quartile of the pair's mean response length (longer responses, larger sums)."""
    if not len(pairs["policy"]):
        return []
    length = pairs["lengths"].mean(-1)
    correct = (pairs["policy"][:, 0] > pairs["policy"][:, 1]).double()
    edges = torch.quantile(length, torch.linspace(0, 1, bins + 1, dtype=torch.float64)).tolist()
    out = []
    for low, high in zip(edges, edges[1:]):
        inside = (length >= low) & ((length < high) if high != edges[-1] else (length <= high))
        if inside.any():
            out.append({"min_tokens": low, "max_tokens": high, "pairs": int(inside.sum()),
                        "ranking_accuracy": float(correct[inside].mean())})
    return out


def judge(model_path: str, reference_path: str, judge_path: str, rows: Sequence[Dict[str, Any]], *, prompts: int,
          max_new_tokens: int, seed: int, num_workers: int) -> Dict[str, Any]:
    """Mean judge reward and win rate of the model's samples against the reference's on the same prompts."""
    import ray

    from framework.cluster.generate import generate

    chosen = list(dict.fromkeys((r["prompt"], bool(r["prompt_is_chat"])) for r in rows))[:prompts]
    settings = dict(k=1, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, num_workers=num_workers)
    rewards = []
    for path in (model_path, reference_path):
        samples = [s[0] for s in generate(path, chosen, **settings)]
        rewards.append(torch.tensor(ray.get(ray.remote(num_cpus=1)(_judge_scores).remote(judge_path, chosen, samples))))
    return dict(ranking.win_rate(*rewards), judge=judge_path, max_new_tokens=max_new_tokens, seed=seed)


def _judge_scores(judge_path: str, prompts: Sequence[tuple], samples: Sequence[str]) -> List[float]:
    """The judge's reward of each (prompt, sample); chat prompts rendered with the judge's chat template."""
    from framework.cluster.generate import quiet_task
    from framework.model.loading import load_tokenizer
    from framework.model.reward import score

    quiet_task()
    tokenizer = load_tokenizer(judge_path)
    texts = [tokenizer.apply_chat_template(json.loads(p), add_generation_prompt=True, tokenize=False) if chat else p
             for p, chat in prompts]
    return score(judge_path, texts, samples)


def work_dir() -> tempfile.TemporaryDirectory:
    """Scratch space for stores built from raw files; removed when the evaluation ends."""
    return tempfile.TemporaryDirectory(prefix="alignray-eval-")


def check_judge(path: str) -> None:
    """The judge must be a reward model export (one scalar sequence-classification head), not a causal LM."""
    from transformers import AutoConfig

    from framework.model.loading import check_model_source
    from framework.model.pal import is_user_judge

    if is_user_judge(path):  # <pal export>/users/<user_id>: that user's PAL reward
        return
    check_model_source(path, "--judge")
    config = AutoConfig.from_pretrained(path)
    architectures = ", ".join(config.architectures or []) or "no architecture"
    if config.num_labels != 1 or "ForSequenceClassification" not in architectures:
        raise UserError(f"--judge={path}: not a reward model export ({architectures}, {config.num_labels} labels)",
                        "train one with `alignray train objective=bt_reward` and pass its <output_dir>/export")


def run_eval(model: str, sources: Sequence[str], *, reference: Optional[str] = None, judge_path: Optional[str] = None,
             beta: float = ranking.DEFAULT_BETA, alpha: float = ranking.DEFAULT_ALPHA, max_length: int = 128,
             max_prompt_length: int = 64, num_workers: int = 2, judge_prompts: int = 64, max_new_tokens: int = 32,
             seed: int = 0, address: Optional[str] = None) -> Dict[str, Any]:
    """Check the inputs (before Ray starts), score the data on Ray tasks, return every figure of `alignray eval`
    plus the per-pair margins (for the plots)."""
    from framework.cluster.launcher import ensure_ray_address
    from framework.eval_report import versions
    from framework.model.loading import model_fingerprint

    if not 0 < alpha < 1 or beta <= 0:
        raise UserError(f"--alpha={alpha} --beta={beta}: need 0 < alpha < 1 and beta > 0")
    model = resolve_model(model, "MODEL")
    reference = resolve_model(reference, "--reference") if reference else None
    if reference:
        check_same_tokenizer(model, reference, "--reference")
    if judge_path:
        if not reference:
            raise UserError("--judge compares the model's generations with the reference's", "pass --reference too")
        check_judge(judge_path)
    with work_dir() as scratch:
        stores = prepare_stores(sources, model, Path(scratch), max_length, max_prompt_length)
        ensure_ray_address(address, num_cpus=max(4, num_workers + 2))
        rows = [row for store in stores for row in score_rows(store, model, reference, max_length=max_length,
                max_prompt_length=max_prompt_length, num_workers=num_workers)]
        result = metrics(rows, beta, alpha)
        data = [_data_info(source, store) for source, store in zip(sources, stores)]
    if judge_path:
        result["judge"] = judge(model, reference, judge_path, rows, prompts=judge_prompts,
                                max_new_tokens=max_new_tokens, seed=seed, num_workers=num_workers)
    result.update(beta=beta, alpha=alpha, data=data, versions=versions(),
                  model={"path": model, "fingerprint": model_fingerprint(model)},
                  reference={"path": reference, "fingerprint": model_fingerprint(reference)} if reference else None,
                  settings={"max_length": max_length, "max_prompt_length": max_prompt_length, "num_workers": num_workers})
    return result


def _data_info(source: str, store_path: str) -> Dict[str, Any]:
    """What eval.json records of one --data source: its store (if given as one), rows, kinds, source hashes."""
    from framework.data_prep import is_store
    from framework.store import open_store

    version = open_store(store_path)
    return {"source": source, "store": store_path if is_store(source) else None, "rows": version.num_rows,
            "kinds": version.manifest.get("kinds"), "sources": version.manifest.get("sources")}
