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
    from framework.store import build_store, open_store

    if is_store(sources):
        return str(open_store(sources).path)
    version = build_store(
        [s for s in sources.split(",") if s], str(out), tokenizer=tokenizer, kind=kind,
        max_prompt_tokens=cfg.data.max_prompt_length, max_response_tokens=cfg.data.max_length,
    )
    return str(version.path)


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

    train = cfg.data.train
    if train is None:
        make = demo_data.SHAPES.get(kind)
        if make is None:
            raise ValueError(f"no built-in demo data for kind {kind!r}; set data.train")
        train = str(demo_data.write_jsonl(make(cfg.data.demo_train_rows, seed=1), output / "data" / f"demo-{kind}-train.jsonl"))
    eval_source = cfg.data.eval
    if eval_source is None and cfg.data.train is None:
        eval_source = str(demo_data.write_jsonl(demo_data.pairs(cfg.data.demo_eval_rows, seed=2), output / "data" / "demo-pairs-eval.jsonl"))
    train_store = _store_from(train, store_root / "train", tokenizer_path, kind, cfg)
    eval_store = _store_from(eval_source, store_root / "eval", tokenizer_path, "pairwise", cfg) if eval_source else None
    return Prepared(model_path, cfg.model.reference_path or model_path, tokenizer_path, train_store, eval_store)
