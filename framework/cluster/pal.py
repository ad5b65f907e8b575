"""`objective=pal_reward` end to end: frozen-encoder embeddings of every row on Ray workers, the PAL head
(framework/model/pal.py) fitted on them, per-user held-out accuracy, and an export with a judge per user.

Every training row needs a `user_id` (framework/store: the optional column). Held-out rows of users not seen in
training are scored with a few-shot fit: their first `few_shot` pairs fit the user's mixture weights, the rest
are evaluated (`eval/new_users_accuracy`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

log = logging.getLogger(__name__)
FEW_SHOT = 16


def _embedding_part(store_path: str, start: int, end: int, *, model_path: str, max_length: int) -> List[tuple]:
    """(prompt embedding [E], prompt + response embeddings [2, E], user_id) per row in [start, end)."""
    from framework.model.embedding import mean_pooler, pair_embeddings
    from framework.store import open_store

    tokenizer, pool = mean_pooler(model_path)
    rows = open_store(store_path).take(list(range(start, end)), columns=["prompt", "prompt_is_chat", "responses",
                                                                         "user_id"]).to_pylist()
    out: List[tuple] = []
    for first in range(0, len(rows), 256):
        chunk = rows[first : first + 256]
        prompts, responses = pair_embeddings(tokenizer, pool, chunk, max_length)
        out += [(p.clone(), r.clone(), row["user_id"]) for p, r, row in zip(prompts, responses, chunk)]
    return out


def embed_store(store_path: str, model_path: str, *, max_length: int = 128, num_workers: int = 2) -> Dict[str, Any]:
    """{"prompts" [N, E], "responses" [N, 2, E] chosen first, "user_ids" [N]} of a pairwise store, on Ray."""
    import torch

    from framework.cluster.store_passes import _map_rows
    from framework.errors import UserError
    from framework.store import open_store

    version = open_store(store_path)
    if version.kind != "pairwise" or "user_id" not in version.columns:
        raise UserError(f"objective=pal_reward needs pairwise rows with a user_id; {store_path} is {version.kind!r}"
                        f"{'' if 'user_id' in version.columns else ' without a user_id column'}",
                        "add a user_id field to every chosen/rejected row and rebuild the store")
    rows = _map_rows(str(version.path), _embedding_part, dict(model_path=model_path, max_length=max_length), num_workers)
    missing = sum(1 for row in rows if row[2] is None)
    if missing:
        raise UserError(f"{missing} of {len(rows)} rows of {store_path} have no user_id", "PAL learns one mixture per user")
    return {"prompts": torch.stack([r[0] for r in rows]), "responses": torch.stack([r[1] for r in rows]),
            "user_ids": [r[2] for r in rows]}


def _indexed(embedded: Dict[str, Any], users: Sequence[str]) -> Dict[str, Any]:
    import torch

    index = {user: i for i, user in enumerate(users)}
    return {"prompts": embedded["prompts"], "responses": embedded["responses"],
            "users": torch.tensor([index.get(u, -1) for u in embedded["user_ids"]])}


def _subset(data: Dict[str, Any], mask: Any) -> Dict[str, Any]:
    return {key: value[mask] for key, value in data.items()}


def evaluate(head: Any, objective: Any, users: Sequence[str], embedded: Dict[str, Any], few_shot: int = FEW_SHOT) -> Dict[str, Any]:
    """Held-out accuracy (chosen scored above rejected) per known user and overall, and for unseen users after
    fitting their weights on their first `few_shot` pairs."""
    import torch

    from framework.model.pal import fit_user, rewards

    data = _indexed(embedded, users)
    known = data["users"] >= 0
    correct = torch.zeros(len(known), dtype=torch.bool)
    if known.any():
        correct[known] = rewards(head, objective, _subset(data, known)).diff(dim=1)[:, 0] < 0
    per_user = {u: float(correct[data["users"] == i].float().mean()) for i, u in enumerate(users) if (data["users"] == i).any()}
    new_correct: List[bool] = []
    for user in sorted({u for u, k in zip(embedded["user_ids"], known.tolist()) if not k}):
        rows = torch.tensor([i for i, u in enumerate(embedded["user_ids"]) if u == user])
        if len(rows) <= few_shot:
            continue
        shots, test = _subset(data, rows[:few_shot]), _subset(data, rows[few_shot:])
        logits = fit_user(head, objective, shots)
        test["users"] = torch.zeros_like(test["users"])
        new_correct += (rewards(head, objective, test, user_logits=logits[None]).diff(dim=1)[:, 0] < 0).tolist()
    return {"eval/pal_accuracy": float(correct[known].float().mean()) if known.any() else None,
            "eval/pal_accuracy_per_user": per_user,
            "eval/new_users_accuracy": sum(new_correct) / len(new_correct) if new_correct else None,
            "eval/new_users_pairs": len(new_correct)}


def train_pal(train_store: str, model_path: str, hparams: Dict[str, Any], out: str, *, eval_store: Any = None,
              steps: int = 300, lr: float = 1e-2, seed: int = 0, max_length: int = 128, num_workers: int = 2) -> Dict[str, Any]:
    """Fit PAL on `train_store` (frozen `model_path` encoder), evaluate on `eval_store`, export to `out`/export."""
    import torch

    from framework.model.loading import load_tokenizer, model_fingerprint
    from framework.model.pal import PALHead, fit, save
    from framework.objectives import build_objective

    started = time.perf_counter()
    objective = build_objective("pal_reward", **hparams)
    embedded = embed_store(train_store, model_path, max_length=max_length, num_workers=num_workers)
    users = sorted(set(embedded["user_ids"]))
    torch.manual_seed(seed)
    head = PALHead(embedded["prompts"].shape[1], len(users), variant=objective.variant,
                   num_prototypes=objective.num_prototypes, dim=objective.dim, seed=seed)
    losses = fit(head, objective, _indexed(embedded, users), steps=steps, lr=lr)
    summary: Dict[str, Any] = {"objective": "pal_reward", "users": len(users), "rows": len(embedded["user_ids"]),
                               "steps": steps, "loss_start": losses[0], "final_loss": losses[-1]}
    if eval_store:
        summary.update(evaluate(head, objective, users, embed_store(eval_store, model_path, max_length=max_length,
                                                                    num_workers=num_workers)))
    info = {"encoder": model_path, "fingerprint": model_fingerprint(model_path), "max_length": max_length,
            "objective": hparams, "train_store": train_store}
    summary["export"] = str(save(head.eval(), users, str(Path(out) / "export"), info, load_tokenizer(model_path)))
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def fit_new_user(export: str, store_path: str, user: str, *, num_workers: int = 2) -> Dict[str, Any]:
    """Few-shot: fit `user`'s mixture weights on that user's pairs in `store_path` (the rest of the export frozen),
    add the user to the export, and return {"user", "pairs", "train_accuracy", "judge"}."""
    import torch

    from framework.errors import UserError
    from framework.model.loading import load_tokenizer
    from framework.model.pal import add_user, fit_user, load, rewards
    from framework.objectives import build_objective

    head, config = load(export)
    objective = build_objective("pal_reward", **config["objective"])
    embedded = embed_store(store_path, config["encoder"], max_length=config["max_length"], num_workers=num_workers)
    rows = torch.tensor([i for i, u in enumerate(embedded["user_ids"]) if u == user], dtype=torch.long)
    if len(rows) == 0:
        raise UserError(f"{store_path} has no pairs of user {user!r}", "pass the user_id its rows carry")
    shots = {"prompts": embedded["prompts"][rows], "responses": embedded["responses"][rows],
             "users": torch.zeros(len(rows), dtype=torch.long)}
    logits = fit_user(head, objective, shots)
    accuracy = float((rewards(head, objective, shots, user_logits=logits[None]).diff(dim=1)[:, 0] < 0).float().mean())
    judge = add_user(export, user, logits, load_tokenizer(config["encoder"]))
    return {"user": user, "pairs": len(rows), "train_accuracy": accuracy, "weights": torch.softmax(logits, -1).tolist(),
            "judge": str(judge)}


def train_from_config(cfg: Any) -> Dict[str, Any]:
    """`alignray train objective=pal_reward`: data.train (a store or raw files whose rows carry user_id; default:
    the simulated user groups of framework/demo_data.py `user_pairs`), model.path as the frozen encoder,
    train.max_steps full-batch steps at train.lr."""
    import dataclasses
    import itertools

    from framework import demo_data
    from framework.cluster.launcher import ensure_ray
    from framework.data_prep import prepare

    output = Path(cfg.output_dir)
    if cfg.data.train is None:  # the demo: simulated users whose groups disagree
        data = dataclasses.replace(cfg.data, train=str(demo_data.write_jsonl(
            demo_data.user_pairs(cfg.data.demo_train_rows, seed=1), output / "data" / "demo-users-train.jsonl")),
            eval=str(demo_data.write_jsonl(itertools.chain(  # the training users, and two new ones (few-shot)
                demo_data.user_pairs(cfg.data.demo_eval_rows, seed=2),
                demo_data.user_pairs(cfg.data.demo_eval_rows // 2, seed=3, users_per_group=1, first_user=100)),
                output / "data" / "demo-users-eval.jsonl")))
        cfg = dataclasses.replace(cfg, data=data)
    prepared = prepare(cfg)
    ensure_ray(cfg)
    summary = train_pal(prepared.train_store, prepared.model_path, cfg.objective_hparams, str(output),
                        eval_store=prepared.eval_store, steps=cfg.train.max_steps, lr=cfg.train.lr, seed=cfg.train.seed,
                        max_length=cfg.data.max_length, num_workers=cfg.cluster.num_workers)
    log.info("PAL: %d users, loss %.4f -> %.4f, held-out accuracy %s, export %s", summary["users"],
             summary["loss_start"], summary["final_loss"], summary.get("eval/pal_accuracy"), summary["export"])
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """The run summary `alignray train objective=pal_reward` prints."""
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    per_user = summary.get("eval/pal_accuracy_per_user") or {}
    lines = ["", "alignray run summary (PAL reward model)",
             f"  {summary['users']} users, {summary['rows']} pairs, {summary['steps']} steps, loss "
             f"{summary['loss_start']:.4f} -> {summary['final_loss']:.4f}, {summary['wall_time_s']:.1f} s",
             f"  held-out accuracy: {pct(summary.get('eval/pal_accuracy'))} (per user: "
             + (", ".join(f"{user} {pct(acc)}" for user, acc in per_user.items()) or "n/a") + ")",
             f"  new users, weights fitted on {FEW_SHOT} pairs each: {pct(summary.get('eval/new_users_accuracy'))} "
             f"on {summary.get('eval/new_users_pairs', 0)} pairs",
             f"  export: {summary['export']}  (judge per user: {summary['export']}/users/<user_id>)"]
    return "\n".join(lines)
