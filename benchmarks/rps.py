"""RPS (robust preference selection) against sampling at the requested direction only (issue 13), demo task.

    alignray bench rps [--steps 150] [--rm-steps 100] [--prompts 64] [--directions 5] [--radius 0.39]
                       [--per-direction 2] [--out DIR] [HYDRA_OVERRIDE ...]

On the demo's multi-objective rows ("topic" vs "brevity"): trains a weights-in-context policy (PRO,
`in_context=true`, half the rows with random weights in context, as `bench pareto`'s `pro_random`) and one
`bt_reward` model per objective (pairs ordered by that objective's score). Then, for each requested direction
w_topic ∈ {0.25, 0.5, 0.75}, `alignray select`'s rule picks 1 of N = directions × per_direction candidates per
held-out prompt, sampled either around the direction (RPS, ±radius) or all at it (baseline, radius 0), both
scored by the reward models. Reported per direction: the mean of vᵀr under the reward models (what the rule
maximises) and under the demo's true scores (on-topic words, −words), each objective scaled by its spread on the
held-out rows so the two are comparable. Writes rps-<date>.json and .png into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

log = logging.getLogger("alignray.bench.rps")
RESULTS = Path(__file__).resolve().parent / "results"
DIRECTIONS = (0.25, 0.5, 0.75)


def true_scores(prompt: str, text: str) -> List[float]:
    """The demo's objectives: on-topic words of the prompt's topic, and minus the number of words."""
    from framework.demo_data import TOPICS

    topic = next((t for t in TOPICS if t in prompt.split()), None)
    words = [w for w in text.split() if w != "."]
    return [float(sum(w in TOPICS.get(topic, ()) for w in words)), -float(len(words))]


def objective_pairs(rows: Sequence[Dict[str, Any]], index: int) -> List[Dict[str, Any]]:
    """Pairwise rows ordered by objective `index` of demo multi rows (ties dropped)."""
    out = []
    for row in rows:
        a, b = (s[index] for s in row["objective_scores"])
        if a != b:
            first, second = (row["chosen"], row["rejected"]) if a > b else (row["rejected"], row["chosen"])
            out.append({"prompt": row["prompt"], "chosen": first, "rejected": second})
    return out


def train_models(work: Path, steps: int, rm_steps: int, overrides: List[str]) -> Dict[str, str]:
    from framework import demo_data
    from framework.config import compose_config
    from framework.run import train

    rows = list(demo_data.multi(1000, seed=1))
    multi = demo_data.write_jsonl(iter(rows), work / "data" / "multi.jsonl")
    common = ["cluster.num_workers=1", "train.micro_batch_size=8", "train.eval_at_start=false", "train.seed=0", *overrides]
    runs = {"policy": [f"data.train={multi}", "objective=pro", "objective.random_weights=0.5", f"train.max_steps={steps}"]}
    for index, name in enumerate(demo_data.MULTI_OBJECTIVES):
        pairs = demo_data.write_jsonl(iter(objective_pairs(rows, index)), work / "data" / f"{name}.jsonl")
        runs[name] = [f"data.train={pairs}", "objective=bt_reward", f"train.max_steps={rm_steps}"]
    return {name: train(compose_config([*common, *extra, f"output_dir={work / name}"]))["export"]
            for name, extra in runs.items()}


def evaluate(records: List[Dict[str, Any]], prompts: Sequence[tuple], weights: List[float],
             spread: List[float]) -> Dict[str, float]:
    """Mean vᵀr of the selected responses under the reward models and under the scaled true scores."""
    true = [true_scores(p, r["selected"]) for (p, _), r in zip(prompts, records)]
    utility = [sum(w * s / d for w, s, d in zip(weights, t, spread)) for t in true]
    return {"rm_utility": sum(r["utility"] for r in records) / len(records), "true_utility": sum(utility) / len(utility),
            "true_topic": sum(t[0] for t in true) / len(true), "true_words": -sum(t[1] for t in true) / len(true)}


def plot(results: List[Dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["w_topic"] for r in results]
    for ax, key, label in ((axes[0], "rm_utility", "mean vᵀr, reward models"),
                           (axes[1], "true_utility", "mean vᵀr, true demo scores (scaled)")):
        for method, color in (("rps", "tab:green"), ("baseline", "tab:gray")):
            ax.plot(xs, [r[method][key] for r in results], marker="o", color=color, label=method)
        ax.set_xlabel("requested w_topic")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench rps", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="policy training steps")
    parser.add_argument("--rm-steps", type=int, default=100, help="steps per reward model")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--directions", type=int, default=5)
    parser.add_argument("--radius", type=float, default=math.pi / 8)
    parser.add_argument("--per-direction", type=int, default=2)
    parser.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment
    from framework import demo_data
    from framework.cluster.launcher import shutdown
    from framework.cluster.select import select

    work = Path(tempfile.mkdtemp(prefix="alignray-bench-rps-"))
    held_out = list(demo_data.multi(args.prompts, seed=2))
    prompts = [(row["prompt"], False) for row in held_out]
    scores = [s for row in held_out for s in row["objective_scores"]]
    spread = [max(s[i] for s in scores) - min(s[i] for s in scores) or 1.0 for i in range(2)]
    options = dict(directions=args.directions, per_direction=args.per_direction, max_new_tokens=12, seed=0,
                   max_prompt_length=64, num_workers=2)
    results = []
    try:
        models = train_models(work, args.steps, args.rm_steps, list(args.overrides))
        scorers = [models[name] for name in demo_data.MULTI_OBJECTIVES]
        for w in DIRECTIONS:
            weights = [w, 1.0 - w]
            row = {"w_topic": w}
            for method, radius in (("rps", args.radius), ("baseline", 0.0)):
                records = select(models["policy"], scorers, demo_data.MULTI_OBJECTIVES, weights, prompts,
                                 radius=radius, **options)
                row[method] = evaluate(records, prompts, weights, spread)
            results.append(row)
            log.info("w_topic %.2f: %s", w, json.dumps({k: row[k] for k in ("rps", "baseline")}))
    finally:
        shutdown()
    stamp = dt.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    n = args.directions * args.per_direction
    png = plot(results, out / f"rps-{stamp}.png", f"RPS vs baseline, best of {n}, radius {args.radius:.2f} rad · {stamp}")
    record = {"benchmark": "rps", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {**vars(args), "objectives": demo_data.MULTI_OBJECTIVES, "true_score_spread": spread,
                         "select": options},
              "results": results, "png": str(png), "environment": environment()}
    path = out / f"rps-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
