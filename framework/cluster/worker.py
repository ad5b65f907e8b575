"""The Ray Train worker function: build seam, models, store reader and loop on each rank, then run."""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

# RayReporter lives in reporter.py; METRICS_FILE is re-exported for the launcher.
from framework.cluster.reporter import METRICS_FILE, RayReporter  # noqa: F401

log = logging.getLogger(__name__)


def _quiet_worker_logs() -> None:
    """Per-report INFO lines and per-load progress bars from every worker drown the driver's progress bar."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:  # Ray Train 2.60 logs each report under the module's *file path*, outside the "ray.train" hierarchy
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # DeepSpeed 0.19 calls torch.distributed APIs that torch 2.13 deprecates; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_worker(payload: Dict[str, Any]) -> None:
    """`train_loop_per_worker` for TorchTrainer. `payload` = {"config": RunConfig dict, "paths": Prepared dict}."""
    import ray.train

    from framework.config import from_dict
    from framework.engine.batches import BatchBuilder
    from framework.engine.loop import TrainLoop
    from framework.engine.seam import DeepSpeedSeam, pick_device
    from framework.engine.step import StepRunner
    from framework.model.loading import enable_gradient_checkpointing, load_causal_lm, load_reward_model, load_tokenizer
    from framework.model.lora import AdaptersDisabled, apply_lora, lora_summary
    from framework.objectives import build_objective
    from framework.store import EpochSampler, open_store

    cfg, paths = from_dict(payload["config"]), payload["paths"]
    os.environ.update(payload.get("env", {}))  # ALIGNRAY_TEST_* fault-injection hooks, see launcher.fit
    _quiet_worker_logs()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_worker)))
    _seed_everything(cfg.train.seed)
    device = pick_device(payload["use_gpu"])
    if device.type == "cpu":  # say so before DeepSpeed is imported, instead of its auto-detection warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if world == 1 and cfg.deepspeed.zero_stage in (1, 2) and not cfg.deepspeed.offload_optimizer:
        # One rank has nothing to partition: stage 1/2 would only add gradient-bucket copies (demo DPO step, 1
        # worker: 18.4 → 13.8 ms median, benchmarks/LOG.md). ZeRO-3 and ZeRO-Offload keep their stage.
        cfg.deepspeed.zero_stage = 0
    seam = DeepSpeedSeam(cfg.deepspeed, cfg.train, device, payload["backend"])
    seam.init_distributed()
    data_rank, data_world = _sequence_parallel(cfg, paths["model_path"], rank, world)

    objective = build_objective(cfg.objective_name, **cfg.objective_hparams)
    objective.sync_sum = lambda t: seam.all_reduce_sum(t.detach())
    objective.sync_gather = lambda t: _gather(seam, t)
    store = open_store(paths["train_store"])
    stored_reference = _use_stored_reference(cfg, store, paths, objective)
    tokenizer = load_tokenizer(paths["tokenizer_path"])

    reward = "rewards" in objective.requires
    live_reference = objective.needs_reference and not stored_reference
    # With LoRA the frozen base is the reference unless another model is named: no second copy is loaded.
    base_is_reference = cfg.model.uses_lora and paths["reference_path"] == paths["model_path"]
    with seam.model_loading():
        if reward:
            policy = load_reward_model(paths["model_path"], cfg.model.dtype, tokenizer.pad_token_id, cfg.model.trust_remote_code)
        else:
            policy = load_causal_lm(paths["model_path"], cfg.model.dtype, cfg.model.trust_remote_code)
        if cfg.model.uses_lora:
            policy = apply_lora(policy, cfg.model.lora, reward)
        if cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        separate = live_reference and not base_is_reference
        reference = load_causal_lm(paths["reference_path"], cfg.model.dtype) if separate else None
    parameters = lora_summary(policy)
    engine = seam.wrap_policy(policy, cfg.train.max_steps)
    if reference is not None:
        reference = seam.wrap_reference(reference)
    elif live_reference:
        reference = AdaptersDisabled(engine)
    layout = _layout(cfg, policy, rank)
    mode = "stored" if stored_reference else ("live" if reference is not None else "none")
    if rank == 0:
        info = {"reference": mode, "reference_from": _reference_source(mode, base_is_reference, paths),
                "world_size": world, "zero_stage": cfg.deepspeed.zero_stage, "objective": cfg.objective_name,
                "gradient_checkpointing": cfg.model.gradient_checkpointing,
                "offload_params": cfg.deepspeed.offload_params, "offload_optimizer": cfg.deepspeed.offload_optimizer,
                "sequence_parallel": cfg.train.sequence_parallel,
                "shared_prompt": layout.shared_prompt and not reward, "packing": layout.packing and not reward,
                "device": str(device), "backend": payload["backend"], **parameters}
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "run_info.json").write_text(json.dumps(info, indent=2))

    sampler = EpochSampler(
        store.num_rows, rank=data_rank, world_size=data_world, batch_size=cfg.train.micro_batch_size,
        seed=cfg.train.seed,
        lengths=store.token_lengths() if cfg.train.length_grouping else None,
    )
    builder = BatchBuilder(tokenizer.pad_token_id, cfg.data.max_length, cfg.data.max_prompt_length,
                           objective.feedback, stored_reference, objective.requires, use_udm_weights=cfg.data.udm,
                           layout=layout)
    eval_batches = _eval_batches(paths.get("eval_store"), data_rank, data_world, cfg, tokenizer.pad_token_id, objective,
                                 layout)
    runner = StepRunner(seam, engine, reference, objective, tokenizer.pad_token_id, cfg.data.max_length,
                        cfg.data.max_prompt_length, tile_above=cfg.model.tiled_logps_above, layout=builder.layout)
    reporter = RayReporter(cfg.output_dir, rank, world, cfg.train.report_every, seam.barrier, payload.get("resume_from"))
    try:
        TrainLoop(runner, builder, store, sampler, cfg.train, reporter, eval_batches).run()
        _write_probe(cfg.output_dir, rank, runner, eval_batches)
        _write_memory(cfg.output_dir, rank, seam, reference)
    finally:
        reporter.close()


def _sequence_parallel(cfg: Any, model_path: str, rank: int, world: int) -> tuple:
    """With train.sequence_parallel=N, route attention through Ulysses; returns the (rank, world size) the data
    sampler uses: the N ranks sharing each sequence read the same examples."""
    if cfg.train.sequence_parallel == 1:
        return rank, world
    from transformers import AutoConfig

    from framework.engine.sequence_parallel import data_parallel_rank, install

    install(AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code),
            cfg.train.sequence_parallel)
    return data_parallel_rank(rank, world, cfg.train.sequence_parallel)


def _reference_source(mode: str, base_is_reference: bool, paths: Dict[str, Any]) -> str:
    if mode == "stored":
        return f"log-probs stored in {paths['train_store']}"
    if mode == "none":
        return "none (the objective needs no reference)"
    if base_is_reference:
        return f"the policy with its LoRA adapters disabled (base model {paths['model_path']}; no second copy)"
    return f"a separate model loaded from {paths['reference_path']}"


def _use_stored_reference(cfg: Any, store: Any, paths: Dict[str, Any], objective: Any) -> bool:
    """Stored reference log-probs are used when present and made by the configured reference."""
    from framework.cluster.reference import stored_reference_matches

    if not objective.needs_reference or cfg.data.use_stored_reference == "never":
        return False
    if objective.live_reference_inputs():  # `require` with such an objective is refused by config.from_dict
        return False
    ok, reason = stored_reference_matches(store, paths["reference_path"], cfg.data.max_length, cfg.data.max_prompt_length)
    if cfg.data.use_stored_reference == "require" and not ok:
        from framework.config import ConfigError

        raise ConfigError(f"data.use_stored_reference=require but {reason}")
    return ok


def _layout(cfg: Any, policy: Any, rank: int) -> Any:
    """The forward layout from model.shared_prompt/packing where the model can run it: Ulysses splits padded
    rows; FlashAttention takes no custom mask but packs single sequences (reward heads: see BatchBuilder)."""
    from framework.model.batching import PADDED, Layout
    from framework.model.logprobs import attention_kind, supports_packed

    layout = Layout(cfg.model.shared_prompt, cfg.model.packing, cfg.model.pack_tokens)
    if layout.padded:
        return layout
    if cfg.train.sequence_parallel > 1:
        reason, layout = "train.sequence_parallel > 1 splits padded rows", PADDED
    elif layout.shared_prompt and not supports_packed(policy):
        reason = f"{attention_kind(policy)} attention takes no custom mask"
        layout = Layout(False, layout.packing, layout.pack_tokens) if supports_packed(policy, False) else PADDED
    else:
        return layout
    if rank == 0:
        log.warning("%s: model.shared_prompt%s off", reason, "" if layout.packing else "/packing")
    return layout


def _eval_batches(eval_store: Optional[str], rank: int, world: int, cfg: Any, pad_id: int, objective: Any,
                  layout: Any = None) -> List[Any]:
    """This rank's held-out micro-batches, in the training forward's layout (None = padded rows)."""
    if not eval_store:
        return []
    from framework.engine.batches import BatchBuilder
    from framework.model.batching import PADDED
    from framework.store import EpochSampler, open_store

    store = open_store(eval_store)
    sampler = EpochSampler(store.num_rows, rank=rank, world_size=world, batch_size=32, seed=0, shuffle=False)
    # A multi store keeps its per-objective scores (per-objective accuracy); PRO's policy sees its weights in context.
    feedback = "multi" if store.kind == "multi" else "pairwise"
    requires = [r for r in objective.requires if r == "context_prompts"]
    builder = BatchBuilder(pad_id, cfg.data.max_length, cfg.data.max_prompt_length, feedback, False,
                           requires + [r for r in objective.requires if r == "rewards"], layout=layout or PADDED)
    return [builder.build(store.take(batch.indices), batch.is_padding) for batch in sampler.plan(0)]


def _write_memory(output_dir: str, rank: int, seam: Any, reference: Any) -> None:
    """This rank's peak RSS and model-state bytes (what LoRA and ZeRO save), for benchmarks and the curious."""
    import resource

    record = {"rank": rank, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
              **{f"{k}_mib": v / 2**20 for k, v in seam.model_state_bytes(reference).items()}}
    memory_dir = Path(output_dir) / "memory"
    memory_dir.mkdir(parents=True, exist_ok=True)
    (memory_dir / f"rank{rank}.json").write_text(json.dumps(record, indent=2))


def _write_probe(output_dir: str, rank: int, runner: Any, eval_batches: List[Any]) -> None:
    """Per-sequence log-probs of the trained engine on this rank's first eval batch, to check the HF export."""
    if not eval_batches:
        return
    from framework.engine.step import stats

    batch = eval_batches[0]
    with torch.no_grad():
        out = stats(runner.policy, batch.tokens.to(runner.seam.device), reward=runner.reward_model)
    logps = (out.rewards if runner.reward_model else out.logps).cpu()
    probe_dir = Path(output_dir) / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"row_ids": batch.row_ids, "logps": logps, "weights": batch.weights}, probe_dir / f"rank{rank}.pt")


def _gather(seam: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape on all ranks) concatenated in rank order along dim 0, by one sum."""
    slots = torch.zeros((seam.world_size, *tensor.shape), dtype=tensor.dtype, device=seam.device)
    slots[seam.rank] = tensor.detach().to(seam.device)
    return seam.all_reduce_sum(slots).flatten(0, 1).cpu()
