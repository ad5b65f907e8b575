"""SPA self-annotated preference rounds (arXiv 2406.04412; OBJECTIVES.md §8.1) on Ray.

Round 0 trains π₀ with DPO on the small seed of labelled pairs. Round i = 1..R then
1. samples two responses per prompt of the round's share of the unlabelled prompts from π_{i−1}
   (`framework.cluster.generate`, seeded per row, on Ray tasks);
2. labels each pair with π_{i−1}'s implicit reward against the initial model, ρ(y) = ℓ_{π_{i−1}}(y) − ℓ_init(y):
   the response with the larger ρ is chosen (P(y₁ ≻ y₂) = σ(β·[ρ(y₁) − ρ(y₂)]) > ½); log-probs come from the
   store pass that computes stored reference log-probs, so they match the trainer's exactly;
3. writes the pairs as a new version of `<out>/store` whose manifest's `spa` entry records the round, the
   policy that sampled and labelled, the initial model and β; the column `spa_rewards` keeps β·ρ of
   (chosen, rejected) per row;
4. trains π_i from π_{i−1} on that version with `objective=spa` and λ_i = `lambdas[i−1]`.

Choices the sources leave open (stated, not confirmed):
* the unlabelled prompts are split into R equal contiguous shares, a new share per round;
* pairs whose two samples are the same text carry no preference and are dropped;
* the training reference of round i is π_{i−1} (iterative DPO); labelling always uses the initial model;
* round versions hold that round's pairs only (the seed trains round 0 alone). Writing one takes two store
  versions (build, then the labeller column with the manifest entry); the second is the round's version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from framework.cluster.generate import Prompt

log = logging.getLogger(__name__)
LAMBDAS = (0.5, 0.25, 0.125)  # the paper's λ per round (via a review; OBJECTIVES.md §9.10)


def sequence_logps(store_path: str, model_path: str, *, max_length: int, max_prompt_length: int,
                   num_workers: int) -> List[List[float]]:
    """Summed response log-probs [rows][2] of a pairwise store under `model_path`, on Ray tasks."""
    from framework.cluster.store_passes import _map_rows, _reference_part

    options = dict(model_path=model_path, max_length=max_length, max_prompt_length=max_prompt_length,
                   batch_size=16, dtype="fp32")
    return [logps for logps, _ in _map_rows(store_path, _reference_part, options, num_workers)]


def pair_rows(prompts: Sequence[Prompt], samples: Sequence[List[str]]) -> List[Dict[str, Any]]:
    """Unlabelled pairs (chosen/rejected = first/second sample) of prompts whose two samples differ."""
    return [{"prompt": json.loads(text) if chat else text, "chosen": pair[0], "rejected": pair[1]}
            for (text, chat), pair in zip(prompts, samples) if pair[0].strip() != pair[1].strip()]


def label(rows: Sequence[Dict[str, Any]], policy: Sequence[Sequence[float]], initial: Sequence[Sequence[float]],
          beta: float) -> Tuple[List[Dict[str, Any]], List[List[float]]]:
    """Order each pair by the implicit reward β·(ℓ_policy − ℓ_initial): (labelled rows, [β·ρ_w, β·ρ_l] per row)."""
    labelled, rewards = [], []
    for row, pol, ini in zip(rows, policy, initial):
        first, second = (beta * (p - i) for p, i in zip(pol, ini))
        keep = first >= second
        labelled.append({**row, "chosen": row["chosen"] if keep else row["rejected"],
                         "rejected": row["rejected"] if keep else row["chosen"]})
        rewards.append([first, second] if keep else [second, first])
    return labelled, rewards


def write_round(store_root: Path, scratch: Path, rows: Sequence[Dict[str, Any]], rewards: Sequence[List[float]],
                tokenizer: str, info: Dict[str, Any], limits: Tuple[int, int]) -> str:
    """The round's labelled pairs as a new version of the store at `store_root`; returns its path."""
    from framework.demo_data import write_jsonl
    from framework.store import add_columns, build_store

    source = write_jsonl(rows, scratch / f"round-{info['round']}-labelled.jsonl")
    built = build_store([str(source)], str(store_root), tokenizer=tokenizer, kind="pairwise", progress=False,
                        max_prompt_tokens=limits[1], max_response_tokens=limits[0], num_proc=1)
    if built.num_rows != len(rows):
        raise RuntimeError(f"SPA round {info['round']}: {len(rows) - built.num_rows} labelled pairs were rejected "
                           f"by the store build (see {built.path}/rejects.jsonl)")
    version = add_columns(built, {"spa_rewards": list(rewards)}, note=f"SPA round {info['round']} labels",
                          extra_manifest={"spa": info})
    return str(version.path)


def annotate_round(round_index: int, prompts: Sequence[Prompt], policy: str, initial: str, tokenizer: str, *,
                   out: Path, beta: float, sampling: Dict[str, Any], limits: Tuple[int, int],
                   num_workers: int) -> str:
    """Steps 1–3 of a round (see the module docstring); returns the new store version's path."""
    from framework.cluster.generate import generate
    from framework.demo_data import write_jsonl
    from framework.store import build_store

    samples = generate(policy, prompts, k=2, num_workers=num_workers, seed=sampling["seed"] + 1000 * round_index,
                       max_new_tokens=sampling["max_new_tokens"], temperature=sampling["temperature"],
                       max_prompt_length=limits[1])
    pairs = pair_rows(prompts, samples)
    if not pairs:
        raise RuntimeError(f"SPA round {round_index}: every prompt's two samples were identical")
    scratch = out / "scratch" / f"round-{round_index}"
    # Tokenized exactly as training will read them; labels follow this store's rows (the build may merge rows).
    unlabelled = build_store([str(write_jsonl(pairs, scratch / "pairs.jsonl"))], str(scratch / "store"),
                             tokenizer=tokenizer, kind="pairwise", progress=False, num_proc=1,
                             max_prompt_tokens=limits[1], max_response_tokens=limits[0])
    rows = [{"prompt": json.loads(r["prompt"]) if r["prompt_is_chat"] else r["prompt"],
             "chosen": r["responses"][0], "rejected": r["responses"][1]}
            for r in unlabelled.table(columns=["prompt", "prompt_is_chat", "responses"]).to_pylist()]
    options = dict(max_length=limits[0], max_prompt_length=limits[1], num_workers=num_workers)
    labelled, rewards = label(rows, sequence_logps(str(unlabelled.path), policy, **options),
                              sequence_logps(str(unlabelled.path), initial, **options), beta)
    info = {"round": round_index, "model": policy, "labeller": {"policy": policy, "initial": initial, "beta": beta,
            "rule": "implicit reward beta*(logp_policy - logp_initial)"}, "pairs": len(labelled),
            "sampling": dict(sampling, k=2)}
    return write_round(out / "store", scratch, labelled, rewards, tokenizer, info, limits)


def prompt_shares(prompts: Sequence[Prompt], rounds: int) -> List[List[Prompt]]:
    """R contiguous, nearly equal shares of the unlabelled prompts, one per round."""
    size, extra = divmod(len(prompts), rounds)
    bounds = [i * size + min(i, extra) for i in range(rounds + 1)]
    return [list(prompts[bounds[i]:bounds[i + 1]]) for i in range(rounds)]


def train_round(round_index: int, overrides: Sequence[str], *, model: str, reference: str, train: str,
                out: Path) -> Dict[str, Any]:
    """Train one round in-process (`framework.run.train`); round 0 is DPO on the seed, later rounds `spa`."""
    from framework.config import compose_config
    from framework.run import train as run_train

    objective = ["objective=dpo"] if round_index == 0 else [
        "objective=spa", f"objective.extrapolation={LAMBDAS[min(round_index, len(LAMBDAS)) - 1]}"]
    cfg = compose_config([*overrides, *objective, f"model.path={model}", f"model.reference_path={reference}",
                          f"data.train={train}", f"output_dir={out / f'round-{round_index}'}"])
    summary = run_train(cfg)
    if "export" not in summary:
        raise RuntimeError(f"SPA round {round_index} wrote no HF export (train.export=false or interrupted)")
    return summary


def run_rounds(seed_pairs: str, prompts: Sequence[Prompt], *, rounds: int, out: Path, overrides: Sequence[str],
               beta: float, sampling: Dict[str, Any], num_workers: int) -> List[Dict[str, Any]]:
    """Round 0 (DPO on the seed) and R SPA rounds; one record per round (store version, export, accuracy)."""
    from framework.cluster.launcher import ensure_ray
    from framework.config import compose_config
    from framework.model.demo import demo_model_path

    base = compose_config(list(overrides))
    initial = base.model.path or demo_model_path()
    tokenizer = base.data.tokenizer or initial
    limits = (base.data.max_length, base.data.max_prompt_length)
    ensure_ray(base)
    records, policy, train = [], initial, seed_pairs
    for round_index, share in enumerate([[]] + prompt_shares(prompts, rounds)):
        if round_index:
            train = annotate_round(round_index, share, policy, initial, tokenizer, out=out, beta=beta,
                                   sampling=sampling, limits=limits, num_workers=num_workers)
        summary = train_round(round_index, overrides, model=policy, reference=policy, train=train, out=out)
        policy = summary["export"]
        records.append({"round": round_index, "train": train, "export": policy,
                        "eval_accuracy": summary.get("eval_accuracy_end"),
                        "eval_reward_accuracy": summary.get("eval_reward_accuracy_end")})
        log.warning("SPA round %d: held-out accuracy %s", round_index, summary.get("eval_accuracy_end"))
    (out / "spa.json").write_text(json.dumps(records, indent=2))
    return records
