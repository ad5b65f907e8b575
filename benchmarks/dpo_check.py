"""The DPO bench's check that alignray and TRL train on the same tokens and compute the same loss.

In one process: TRL's DPOTrainer prepares the rows (its tokenization and truncation) and alignray builds its store
from the same JSONL with the bench's config. Every row's (prompt+chosen, prompt+rejected) token sequences, as each
side would forward them, must match as multisets; then both compute the DPO loss of TRL's first batch at step 0
(alignray through the training code path: BatchBuilder with the configured layout, StepRunner's forwards and the
registered objective). The reference is the policy with small fixed noise on its weights, so the loss differs from
log 2 and depends on every token.
"""

from __future__ import annotations

import types
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

REFERENCE_NOISE = 0.02


def perturbed_reference(model_dir: str, out: Path, seed: int = 1) -> str:
    """The policy's weights plus N(0, REFERENCE_NOISE²) noise, saved as a model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(REFERENCE_NOISE * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return str(out)


def trl_sequences(dataset: Any, max_length: int) -> List[Tuple[tuple, tuple]]:
    """Per row of TRL's prepared dataset, its two sequences as the collator cuts them (keep_start)."""
    return [(tuple((row["prompt_ids"] + row["chosen_ids"])[:max_length]),
             tuple((row["prompt_ids"] + row["rejected_ids"])[:max_length])) for row in dataset]


def store_sequences(table: Any, max_length: int, max_prompt_length: int) -> List[Tuple[tuple, tuple]]:
    """Per store row, its (chosen, rejected) sequences as alignray's batches cut them."""
    from framework.model.batching import fit_lengths

    out = []
    for prompt, responses in zip(table["prompt_ids"].to_pylist(), table["response_ids"].to_pylist()):
        fitted = [fit_lengths(prompt, response, max_length, max_prompt_length) for response in responses]
        out.append(tuple(tuple(p + r) for p, r in fitted))
    return out


def matching_rows(wanted: Sequence[tuple], available: Sequence[tuple]) -> List[int]:
    """Indices into `available` of the rows equal to `wanted`, each used once."""
    where: Dict[tuple, List[int]] = {}
    for index, key in enumerate(available):
        where.setdefault(key, []).append(index)
    return [where[key].pop(0) for key in wanted]


def trl_first_batch_loss(trainer: Any, batch_size: int) -> float:
    examples = [trainer.train_dataset[i] for i in range(batch_size)]
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, trainer.data_collator(examples)))


def alignray_loss(cfg: Any, prepared: Any, indices: Sequence[int]) -> Dict[str, Any]:
    """Our loss on the store rows `indices` at step 0, through the training code path."""
    from framework.engine.batches import BatchBuilder
    from framework.engine.step import StepRunner
    from framework.model.batching import PADDED, Layout
    from framework.model.loading import load_causal_lm, load_tokenizer
    from framework.model.logprobs import supports_packed
    from framework.objectives import build_objective
    from framework.store import open_store

    policy, frozen = load_causal_lm(prepared.model_path), load_causal_lm(prepared.reference_path)
    layout = Layout(cfg.model.shared_prompt, cfg.model.packing, cfg.model.pack_tokens)
    layout = layout if supports_packed(policy) else PADDED  # as the worker decides
    objective = build_objective(cfg.objective_name, **cfg.objective_hparams)
    pad_id = load_tokenizer(prepared.tokenizer_path).pad_token_id
    lengths = (cfg.data.max_length, cfg.data.max_prompt_length)
    builder = BatchBuilder(pad_id, *lengths, objective.feedback, False, objective.requires, layout=layout)
    batch = builder.build(open_store(prepared.train_store).take(list(indices)), [False] * len(indices))
    runner = StepRunner(types.SimpleNamespace(device=torch.device("cpu")), policy, frozen, objective, pad_id, *lengths,
                        tile_above=cfg.model.tiled_logps_above, layout=layout)
    with torch.no_grad():
        out, _ = runner.objective_output(batch, runner.objective_inputs(batch))
    weights = batch.weights.to(out.losses.dtype)
    return {"loss": float((out.losses * weights).sum() / weights.sum()),
            "layout": {"shared_prompt": layout.shared_prompt, "packing": layout.packing, "pack_tokens": layout.pack_tokens}}


def loss_check(inputs: Dict[str, Any], out: Path, overrides: Sequence[str]) -> Dict[str, Any]:
    """Same token sequences on every row, and the same first-batch loss to LOSS_TOLERANCE."""
    from transformers import AutoModelForCausalLM

    from benchmarks.dpo import LOSS_TOLERANCE, _trl_trainer
    from framework.config import compose_config
    from framework.data_prep import prepare
    from framework.store import open_store

    out.mkdir(parents=True, exist_ok=True)
    reference = perturbed_reference(inputs["model"], out / "reference")
    trainer = _trl_trainer(inputs, out / "trl", ref_model=AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32))
    cfg = compose_config([*overrides, f"model.reference_path={reference}"])
    prepared = prepare(cfg)
    theirs = trl_sequences(trainer.train_dataset, cfg.data.max_length)
    ours = store_sequences(open_store(prepared.train_store).table(), cfg.data.max_length, cfg.data.max_prompt_length)
    missing = Counter(theirs) - Counter(ours)
    extra = Counter(ours) - Counter(theirs)
    first = theirs[: inputs["batch"]]
    trl_loss = trl_first_batch_loss(trainer, len(first))
    result = {"trl_rows": len(theirs), "alignray_rows": len(ours), "rows_only_in_trl": sum(missing.values()),
              "rows_only_in_alignray": sum(extra.values()), "first_batch_rows": len(first), "trl_loss": trl_loss,
              "reference": f"policy + N(0, {REFERENCE_NOISE}^2) weight noise (seed 1), both sides",
              "tolerance": LOSS_TOLERANCE}
    if not set(first) <= set(ours):
        return {**result, "passed": False, "error": "TRL's first batch has rows alignray's store lacks"}
    ours_result = alignray_loss(cfg, prepared, matching_rows(first, ours))
    difference = abs(ours_result["loss"] - trl_loss)
    same_rows = not missing and not extra
    return {**result, "alignray_loss": ours_result["loss"], "alignray_layout": ours_result["layout"],
            "abs_difference": difference, "passed": same_rows and difference <= LOSS_TOLERANCE}
