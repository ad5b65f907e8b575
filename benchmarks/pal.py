"""PAL (issue 13): per-user held-out accuracy of PAL-A / PAL-B against one Bradley–Terry model, on simulated users
whose groups disagree.

    alignray bench pal [--rows 2000] [--steps 300] [--lr 3e-3] [--bt-steps 200] [--workers 2] [--out DIR]

Data: framework/demo_data.py `user_pairs` — 8 users in two groups, "topic-*" prefer the more on-topic response,
"brief-*" the shorter one (they disagree on ~80% of pairs); held-out pairs of the same users, plus two new users
(one per group) whose weights are fitted on 16 of their pairs. Methods, all on the demo model:
  pal_a, pal_b     PAL (K = 2) on frozen mean-pooled embeddings (computed on Ray workers)
  bt_frozen        PAL-A with K = 1 on the same embeddings and head: one shared BT model (test-proven equivalence)
  bt_reward        `objective=bt_reward` trained end to end with Ray Train (scalar head, trainable encoder),
                   ignoring users (skipped with --bt-steps 0)
Writes pal-<date>.json and .png into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("alignray.bench.pal")
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {"pal_a": {"variant": "a", "num_prototypes": 2}, "pal_b": {"variant": "b", "num_prototypes": 2},
           "bt_frozen": {"variant": "a", "num_prototypes": 1}}


def make_data(work: Path, rows: int) -> Dict[str, str]:
    from framework import demo_data
    from framework.model.demo import demo_model_path
    from framework.store import build_store

    files = {"train": demo_data.user_pairs(rows, seed=1),
             "eval": itertools.chain(demo_data.user_pairs(512, seed=2),
                                     demo_data.user_pairs(256, seed=3, users_per_group=1, first_user=100))}
    out = {}
    for name, generated in files.items():
        path = demo_data.write_jsonl(generated, work / f"{name}.jsonl")
        out[name] = str(build_store([str(path)], str(work / f"store-{name}"), tokenizer=demo_model_path(),
                                    num_proc=1, progress=False).path)
        out[f"{name}_jsonl"] = str(path)
    return out


def per_group(per_user: Dict[str, float]) -> Dict[str, float]:
    groups: Dict[str, List[float]] = {}
    for user, accuracy in per_user.items():
        groups.setdefault(user.split("-")[0], []).append(accuracy)
    return {group: round(sum(v) / len(v), 4) for group, v in groups.items()}


def bt_reward_run(data: Dict[str, str], work: Path, steps: int, workers: int) -> Dict[str, Any]:
    """Train one bt_reward model on every user's pairs; its accuracy per held-out user."""
    from framework.config import compose_config
    from framework.model.reward import score
    from framework.run import train

    summary = train(compose_config(["objective=bt_reward", f"data.train={data['train']}", f"train.max_steps={steps}",
                                    "train.eval_at_start=false", f"cluster.num_workers={workers}",
                                    "cluster.cpus_per_worker=1", f"output_dir={work / 'bt_reward'}"]))
    rows = [json.loads(line) for line in Path(data["eval_jsonl"]).read_text().splitlines()]
    chosen = score(summary["export"], [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = score(summary["export"], [r["prompt"] for r in rows], [r["rejected"] for r in rows])
    per_user: Dict[str, List[bool]] = {}
    for row, good, bad in zip(rows, chosen, rejected):
        per_user.setdefault(row["user_id"], []).append(good > bad)
    accuracy = {user: round(sum(v) / len(v), 4) for user, v in sorted(per_user.items()) if not user.endswith("-100")}
    new = [x for user, v in per_user.items() if user.endswith("-100") for x in v]
    return {"method": "bt_reward", "accuracy": round(sum(sum(v) for u, v in per_user.items() if not u.endswith("-100"))
                                                     / sum(len(v) for u, v in per_user.items() if not u.endswith("-100")), 4),
            "per_user": accuracy, "per_group": per_group(accuracy), "new_users_accuracy": round(sum(new) / len(new), 4),
            "steps": steps, "wall_time_s": summary["wall_time_s"]}


def plot(runs: List[Dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    users = sorted(runs[0]["per_user"])
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ax.bar(np.arange(len(users) + 1) + i * width, [run["per_user"][u] for u in users] + [run["new_users_accuracy"] or 0],
               width, label=f"{run['method']} (all {run['accuracy']:.2f})")
    ax.set_xticks(np.arange(len(users) + 1) + 0.4 - width / 2, users + ["new users\n(16-shot)"], rotation=30, fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ax.axhline(0.5, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench pal", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300, help="full-batch steps of the PAL head")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bt-steps", type=int, default=200, help="Ray Train steps of bt_reward; 0 = skip it")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment
    from framework.cluster.launcher import ensure_ray_address, shutdown
    from framework.cluster.pal import train_pal
    from framework.model.demo import demo_model_path

    work = Path(tempfile.mkdtemp(prefix="alignray-bench-pal-"))
    ensure_ray_address(None, num_cpus=max(4, args.workers + 2))
    runs = []
    try:
        data = make_data(work, args.rows)
        for method, hparams in METHODS.items():
            summary = train_pal(data["train"], demo_model_path(), hparams, str(work / method), eval_store=data["eval"],
                                steps=args.steps, lr=args.lr, num_workers=args.workers)
            per_user = {u: round(a, 4) for u, a in sorted(summary["eval/pal_accuracy_per_user"].items())}
            runs.append({"method": method, "hparams": hparams, "accuracy": round(summary["eval/pal_accuracy"], 4),
                         "per_user": per_user, "per_group": per_group(per_user),
                         "new_users_accuracy": summary["eval/new_users_accuracy"], "final_loss": summary["final_loss"],
                         "wall_time_s": summary["wall_time_s"]})
            log.info("%s: held-out %.3f, per group %s, new users %s", method, runs[-1]["accuracy"], runs[-1]["per_group"],
                     runs[-1]["new_users_accuracy"])
        if args.bt_steps:
            runs.append(bt_reward_run(data, work, args.bt_steps, args.workers))
            log.info("bt_reward: held-out %.3f, per group %s", runs[-1]["accuracy"], runs[-1]["per_group"])
    finally:
        shutdown()
    stamp = dt.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    png = plot(runs, out / f"pal-{stamp}.png", f"PAL vs one BT model: per-user held-out accuracy, 8 simulated users in "
               f"2 disagreeing groups, {args.rows} pairs · {stamp}")
    record = {"benchmark": "pal", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {"rows": args.rows, "steps": args.steps, "lr": args.lr, "bt_steps": args.bt_steps,
                         "workers": args.workers, "encoder": "demo model (frozen for PAL)"},
              "runs": runs, "png": str(png), "environment": environment()}
    path = out / f"pal-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for run in runs:
        print(f"{run['method']:<10} held-out {run['accuracy']:.3f}  per group {run['per_group']}  "
              f"new users {run['new_users_accuracy']}")
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
