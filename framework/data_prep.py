"""Driver-side preparation before any worker starts: resolve the model, build or open the stores.

Built-in demo data is generated deterministically for the objective's feedback kind; user data may be raw files
(JSONL/Parquet/HF dataset dirs, comma-separated) or an existing store directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional

from framework.config import ConfigError, RunConfig
from framework.errors import UserError
from framework.model.loading import check_model_source

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
            raise UserError(f"store {sources} was tokenized with {version.manifest.get('tokenizer', {}).get('path')}, "
                            f"not with the model's tokenizer {tokenizer}", f"rebuild it with --tokenizer {tokenizer}")
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


def _check_sources(key: str, sources: Optional[str]) -> None:
    """Every comma-separated data path exists, is readable and has a known format (or is a store)."""
    from framework.store.sources import source_format

    for path in [s for s in (sources or "").split(",") if s]:
        if not Path(path).exists():
            raise UserError(f"{key}={path}: no such file or directory",
                            "pass JSONL(.gz/.zst), Parquet, a save_to_disk dataset or a store directory")
        if not os.access(path, os.R_OK):
            raise UserError(f"{key}={path}: not readable (permission denied)", "fix the file's permissions")
        if not is_store(path):
            source_format(path)


def _check_resume(resume: Optional[str]) -> None:
    """resume=PATH names a committed checkpoint (resume=auto is resolved later, from the run's storage)."""
    from framework.cluster.checkpoints import require_committed

    if not resume or resume == "auto":
        return
    if "://" not in resume and not Path(resume).is_dir():
        raise UserError(f"resume={resume}: no such checkpoint directory",
                        "use resume=auto, or a checkpoint-NNNNNN directory of an earlier run")
    try:
        require_committed(resume if "://" in resume else str(Path(resume).resolve()))
    except ValueError as err:
        raise UserError(str(err)) from None


def check_inputs(cfg: RunConfig) -> None:
    """User-given paths, checked on the driver before any store build or Ray start, so a typo costs a second."""
    from framework.model.loading import check_tokenizer_source

    _check_sources("data.train", cfg.data.train)
    _check_sources("data.eval", cfg.data.eval)
    if cfg.model.path:
        check_model_source(cfg.model.path, "model.path")
    if cfg.model.reference_path:
        check_model_source(cfg.model.reference_path, "model.reference_path")
    for aligned in cfg.data.aligned_models or []:
        check_model_source(aligned, "data.aligned_models")
    if cfg.data.udm_model:
        check_model_source(cfg.data.udm_model, "data.udm_model")
    if cfg.data.tokenizer:
        check_tokenizer_source(cfg.data.tokenizer, "data.tokenizer")
    elif cfg.model.path:
        check_tokenizer_source(cfg.model.path, "model.path")
    _check_resume(cfg.resume)
    _check_aligned_models(cfg)
    _check_orchestrator(cfg)
    _check_lora(cfg)
    _check_memory_options(cfg)


def _check_memory_options(cfg: RunConfig) -> None:
    """Gradient checkpointing or a sequence-parallel degree the architecture cannot do: one line before Ray."""
    if not cfg.model.gradient_checkpointing and cfg.train.sequence_parallel == 1:
        return
    from framework.model.demo import demo_model_path
    from framework.model.loading import check_memory_options

    check_memory_options(cfg.model.path or demo_model_path(), cfg.model.gradient_checkpointing,
                         cfg.train.sequence_parallel, cfg.model.trust_remote_code)


def _check_lora(cfg: RunConfig) -> None:
    """Target modules the model lacks, or an adapter made for another base: one line before Ray starts."""
    if not cfg.model.uses_lora:
        return
    from framework.model.demo import demo_model_path
    from framework.model.lora import check_lora
    from framework.objectives import objective_class

    reward = "rewards" in objective_class(cfg.objective_name).requires
    check_lora(cfg.model.path or demo_model_path(), cfg.model.lora, reward, cfg.model.trust_remote_code)


def _check_orchestrator(cfg: RunConfig) -> None:
    """PRO's saved adapter and adapter encoder, when named."""
    adapter, encoder = cfg.objective.get("adapter"), cfg.objective.get("adapter_encoder")
    if adapter and not (Path(adapter) / "orchestrator.json").exists():
        raise UserError(f"objective.adapter={adapter}: not an orchestrator adapter (no orchestrator.json)",
                        "train one with `alignray orchestrate train`, or leave objective.adapter=null to train one first")
    if encoder:
        check_model_source(encoder, "objective.adapter_encoder")


def _check_aligned_models(cfg: RunConfig) -> None:
    """PoFT weighs examples by aligned LMs other than the policy (the policy itself would start every weight τ at
    0.5): they must be named, unless data.train is a store that already holds their log-probs."""
    from framework.objectives import objective_class
    from framework.store import open_store

    if "aligned_logps" not in objective_class(cfg.objective_name).requires or cfg.data.aligned_models:
        return
    if cfg.data.train and is_store(cfg.data.train) and "aligned_logps" in open_store(cfg.data.train).columns:
        return
    raise ConfigError(f"objective={cfg.objective_name} needs data.aligned_models (data.train={cfg.data.train} holds "
                      "no aligned_logps)", "set data.aligned_models=[DIR,...] to aligned models other than the "
                      "policy, or train on a store made with `alignray store add-aligned-logps`")


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
            raise UserError(f"no built-in demo data for kind {kind!r}", "set data.train")
        rows = make(cfg.data.demo_train_rows, seed=1)
        if "self_samples" in requires:  # D2O learns from human negatives only
            rows = (row for row in rows if not row["label"])
        train = str(demo_data.write_jsonl(rows, output / "data" / f"demo-{kind}-train.jsonl"))
    eval_source, eval_kind = cfg.data.eval, "multi" if feedback == "multi" else "pairwise"
    if eval_source is None and cfg.data.train is None:
        make_eval = demo_data.multi if feedback == "multi" else demo_data.pairs
        eval_source = str(demo_data.write_jsonl(make_eval(cfg.data.demo_eval_rows, seed=2),
                                                output / "data" / f"demo-{eval_kind}-eval.jsonl"))
    train_store = _store_from(train, store_root / "train", tokenizer_path, kind, cfg)
    train_store = _add_model_columns(train_store, requires, model_path, cfg)
    if feedback == "multi":
        _check_objective_count(cfg, train_store)
    eval_store = _store_from(eval_source, store_root / "eval", tokenizer_path, eval_kind, cfg) if eval_source else None
    if "prompt_weights" in requires:  # PRO: the adapter's per-prompt weights, into both stores
        from framework.cluster import orchestrate
        from framework.objectives import build_objective

        objective = build_objective(cfg.objective_name, **cfg.objective_hparams)
        train_store, eval_store = orchestrate.prepare(objective, train_store, eval_store, tokenizer_path, cfg.output_dir,
                                                      cfg.data.max_prompt_length, cfg.train.seed)
    return Prepared(model_path, cfg.model.reference_path or model_path, tokenizer_path, train_store, eval_store)


def _check_objective_count(cfg: RunConfig, store_path: str) -> None:
    """Multi-objective weights (and MODPO's target) must fit the store's objectives; said here, before Ray."""
    from framework.store import open_store

    version = open_store(store_path)
    names = version.table(columns=["objective_names"]).column("objective_names")[0].as_py() or []
    if not names:
        raise ConfigError(f"objective={cfg.objective_name} needs multi-objective rows, but store {store_path} holds "
                          f"{version.kind} rows", "build it with --kind multi, or add reward-model scores to a pairwise "
                          "store with `alignray store add-scores`")
    weights, target = cfg.objective.get("weights"), cfg.objective.get("target")
    if weights is not None and len(weights) != len(names):
        raise ConfigError(f"objective.weights has {len(weights)} entries but the data has {len(names)} objectives "
                          f"({', '.join(names)})", "give one weight per objective, in this order")
    if target is not None and not 0 <= int(target) < len(names):
        raise ConfigError(f"objective.target={target} but the data has {len(names)} objectives ({', '.join(names)})",
                          f"use an index from 0 to {len(names) - 1}")


def _add_model_columns(store_path: str, requires: tuple, model_path: str, cfg: RunConfig) -> str:
    """Columns some objectives need that come from models: D2O's self-samples, PoFT's aligned log-probs,
    BCO's UDM weights (`data.udm`)."""
    from framework.cluster import store_passes
    from framework.cluster.launcher import ensure_ray
    from framework.store import open_store

    columns = open_store(store_path).table().column_names
    udm = cfg.data.udm and "udm_weights" not in columns
    if {"self_samples", "aligned_logps"} & set(requires) or udm:
        ensure_ray(cfg)
    workers = cfg.cluster.num_workers
    if "self_samples" in requires and "self_sample_ids" not in columns:
        log.warning("store has no self-samples: drawing %d per prompt from %s", cfg.data.self_samples, model_path)
        store_path = str(store_passes.add_samples(store_path, model_path, k=cfg.data.self_samples, num_workers=workers,
                                                  max_prompt_length=cfg.data.max_prompt_length).path)
    if "aligned_logps" in requires and "aligned_logps" not in columns:
        models = cfg.data.aligned_models
        log.warning("store has no aligned-LM log-probs: computing them with %s", ", ".join(models))
        store_path = str(store_passes.add_aligned_logps(store_path, models, num_workers=workers).path)
    if udm:
        embedder = cfg.data.udm_model or model_path
        log.warning("store has no UDM weights: fitting the prompt classifier on embeddings from %s", embedder)
        version = store_passes.add_udm_weights(store_path, embedder, seed=cfg.train.seed, num_workers=workers,
                                               max_prompt_length=cfg.data.max_prompt_length)
        udm_info = version.manifest["udm"]
        log.info("UDM classifier accuracy %.3f; weights in [%.3g, %.3g]", udm_info["accuracy"],
                 udm_info["weight_min"], udm_info["weight_max"])
        store_path = str(version.path)
    return store_path
