"""Driver-side preparation before any worker starts: resolve the model, build or open the stores.

Built-in demo data is generated deterministically for the objective's feedback kind; user data may be raw files
(JSONL/Parquet/HF dataset dirs, comma-separated) or an existing store directory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from framework.config import RunConfig

log = logging.getLogger(__name__)
FEEDBACK_TO_KIND = {"pairwise": "pairwise", "listwise": "ranked", "binary": "binary", "multi": "multi", "sft": "pairwise"}


@dataclasses.dataclass
class Prepared:
    model_path: str
    reference_path: str
    tokenizer_path: str
    train_store: str
    eval_store: Optional[str]


def is_store(path: str) -> bool:
    p = Path(path)
    return (p / "CURRENT").exists() or (p / "manifest.json").exists()


def _store_from(sources: str, out: Path, tokenizer: str, kind: Optional[str], cfg: RunConfig) -> str:
    """An existing store is used as is (after checking its tokenizer); raw files are built into `out`, unless
    `out` already holds a version built from the same bytes with the same tokenizer and limits (re-runs and
    resumes then read the very same rows)."""
    from framework.store import build_store, open_store
    from framework.store.sources import source_fingerprint
    from framework.store.tokenize import tokenizer_fingerprint

    expected_tokenizer = tokenizer_fingerprint(tokenizer)["sha256"]
    if is_store(sources):
        version = open_store(sources)
        if version.manifest.get("tokenizer", {}).get("sha256") != expected_tokenizer:
            raise ValueError(f"store {sources} was tokenized with {version.manifest.get('tokenizer', {}).get('path')}, "
                             f"not with the model's tokenizer {tokenizer}; rebuild it with --tokenizer {tokenizer}")
        return str(version.path)
    paths = [s for s in sources.split(",") if s]
    wanted = {"sources": sorted(source_fingerprint(p)["sha256"] for p in paths), "tokenizer": expected_tokenizer,
              "limits": (kind, cfg.data.max_prompt_length, cfg.data.max_length)}
    if is_store(str(out)):
        current = open_store(str(out))
        m = current.manifest
        have = {"sources": sorted(src["sha256"] for src in m.get("sources", [])),
                "tokenizer": m.get("tokenizer", {}).get("sha256"),
                "limits": (m.get("build", {}).get("kind"), m.get("build", {}).get("max_prompt_tokens"),
                           m.get("build", {}).get("max_response_tokens"))}
        if have == wanted:
            log.info("reusing store %s (same sources, tokenizer and limits)", current.path)
            return str(current.path)
    version = build_store(paths, str(out), tokenizer=tokenizer, kind=kind, num_proc=1 if _ray_running() else None,
                          max_prompt_tokens=cfg.data.max_prompt_length, max_response_tokens=cfg.data.max_length)
    return str(version.path)


def _ray_running() -> bool:
    """The store's tokenizer pool forks; forking a process that runs Ray's threads is unsafe, so build
    in-process then (e.g. a second run in the same interpreter)."""
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def prepare(cfg: RunConfig) -> Prepared:
    """Resolve paths and build stores; everything lands under `cfg.output_dir` unless configured elsewhere."""
    from framework import demo_data
    from framework.model.demo import demo_model_path
    from framework.objectives import objective_class

    output = Path(cfg.output_dir)
    model_path = cfg.model.path or demo_model_path()
    tokenizer_path = cfg.data.tokenizer or model_path
    store_root = Path(cfg.data.store_dir or output / "store")
    feedback = objective_class(cfg.objective_name).feedback
    kind = cfg.data.kind or FEEDBACK_TO_KIND[feedback]

    requires = objective_class(cfg.objective_name).requires
    train = cfg.data.train
    if train is None:
        make = demo_data.SHAPES.get(kind)
        if make is None:
            raise ValueError(f"no built-in demo data for kind {kind!r}; set data.train")
        rows = make(cfg.data.demo_train_rows, seed=1)
        if "self_samples" in requires:  # D2O learns from human negatives only
            rows = (row for row in rows if not row["label"])
        train = str(demo_data.write_jsonl(rows, output / "data" / f"demo-{kind}-train.jsonl"))
    eval_source = cfg.data.eval
    if eval_source is None and cfg.data.train is None:
        eval_source = str(demo_data.write_jsonl(demo_data.pairs(cfg.data.demo_eval_rows, seed=2), output / "data" / "demo-pairs-eval.jsonl"))
    train_store = _store_from(train, store_root / "train", tokenizer_path, kind, cfg)
    train_store = _add_model_columns(train_store, requires, model_path, cfg)
    eval_store = _store_from(eval_source, store_root / "eval", tokenizer_path, "pairwise", cfg) if eval_source else None
    return Prepared(model_path, cfg.model.reference_path or model_path, tokenizer_path, train_store, eval_store)


def _add_model_columns(store_path: str, requires: tuple, model_path: str, cfg: RunConfig) -> str:
    """Columns some objectives need that come from models: D2O's self-samples, PoFT's aligned log-probs."""
    from framework.cluster import store_passes
    from framework.cluster.launcher import ensure_ray
    from framework.store import open_store

    columns = open_store(store_path).table().column_names
    if {"self_samples", "aligned_logps"} & set(requires):
        ensure_ray(cfg)
    workers = cfg.cluster.num_workers
    if "self_samples" in requires and "self_sample_ids" not in columns:
        log.warning("store has no self-samples: drawing %d per prompt from %s", cfg.data.self_samples, model_path)
        store_path = str(store_passes.add_samples(store_path, model_path, k=cfg.data.self_samples, num_workers=workers,
                                                  max_prompt_length=cfg.data.max_prompt_length).path)
    if "aligned_logps" in requires and "aligned_logps" not in columns:
        models = cfg.data.aligned_models or [model_path]
        log.warning("store has no aligned-LM log-probs: computing them with %s", ", ".join(models))
        store_path = str(store_passes.add_aligned_logps(store_path, models, num_workers=workers).path)
    return store_path
