"""SPA self-annotated rounds against DPO on the seed alone (issue 13), on the demo task.

    alignray bench spa [--rounds 3] [--seed-rows 64] [--prompt-rows 192] [--steps 60] [--out DIR] [HYDRA_OVERRIDE ...]

`alignray spa`'s rounds (framework/cluster/spa.py) on the demo pairs: round 0 is DPO on `--seed-rows` labelled
pairs, rounds 1..R sample two responses for a new share of the unlabelled demo prompts from the previous policy,
label them with its implicit reward against the initial model and train with objective=spa. Each round trains
`--steps` steps (1 Ray Train worker, ZeRO-2, seed 0). Baselines: round 0 itself (DPO on the seed, `--steps`) and
DPO on the seed for the same total steps as all rounds ((R+1)·steps), so more training alone is not credited to
SPA. Metric: held-out demo pair accuracy (policy log-prob margin > 0 and implicit reward margin > 0, 256 pairs).
Writes spa-<date>.json and .png into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("alignray.bench.spa")
RESULTS = Path(__file__).resolve().parent / "results"


def plot(rounds: List[Dict[str, Any]], baseline: Dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in rounds]
    for key, label, color in (("eval_accuracy", "policy margin", "tab:blue"),
                              ("eval_reward_accuracy", "implicit reward margin", "tab:green")):
        ax.plot(xs, [r[key] for r in rounds], marker="o", color=color, label=f"SPA rounds ({label})")
        ax.axhline(baseline[key], color=color, linestyle="--", label=f"DPO on seed, same total steps ({label})")
    ax.set_xlabel("round (0 = DPO on the seed)")
    ax.set_ylabel("held-out pair accuracy")
    ax.set_xticks(xs)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignray bench spa", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed-rows", type=int, default=64)
    parser.add_argument("--prompt-rows", type=int, default=192)
    parser.add_argument("--steps", type=int, default=60, help="training steps per round")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks._harness import environment
    from framework import demo_data
    from framework.cluster.launcher import shutdown
    from framework.cluster.spa import run_rounds
    from framework.config import compose_config
    from framework.run import train

    work = Path(tempfile.mkdtemp(prefix="alignray-bench-spa-"))
    seed = demo_data.write_jsonl(demo_data.pairs(args.seed_rows, seed=11), work / "seed.jsonl")
    held_out = demo_data.write_jsonl(demo_data.pairs(256, seed=2), work / "eval.jsonl")
    prompts = [(row["prompt"], False) for row in demo_data.pairs(args.prompt_rows, seed=12)]
    common = [f"data.eval={held_out}", f"train.max_steps={args.steps}", "train.warmup_steps=5", "train.micro_batch_size=8",
              "cluster.num_workers=1", "train.seed=0", *args.overrides]
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "seed": 0}
    try:
        rounds = run_rounds(str(seed), prompts, rounds=args.rounds, out=work / "spa", overrides=common, beta=0.1,
                            sampling=sampling, num_workers=2)
        total = args.steps * (args.rounds + 1)
        summary = train(compose_config([*common, "objective=dpo", f"data.train={seed}", f"train.max_steps={total}",
                                        f"output_dir={work / 'dpo-seed-long'}"]))
    finally:
        shutdown()
    baseline = {"steps": total, "eval_accuracy": summary["eval_accuracy_end"],
                "eval_reward_accuracy": summary["eval_reward_accuracy_end"]}
    for record in rounds:
        version = json.loads((Path(record["train"]) / "manifest.json").read_text()) if record["round"] else {}
        record["pairs"] = version.get("spa", {}).get("pairs", args.seed_rows)
    stamp = dt.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    png = plot(rounds, baseline, out / f"spa-{stamp}.png",
               f"SPA on the demo task: {args.seed_rows} seed pairs, {args.rounds} rounds × {args.steps} steps · {stamp}")
    record = {"benchmark": "spa", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "config": {"rounds": args.rounds, "seed_rows": args.seed_rows, "prompt_rows": args.prompt_rows,
                         "steps_per_round": args.steps, "sampling": sampling, "common": common},
              "rounds": rounds, "dpo_seed_same_total_steps": baseline, "png": str(png), "environment": environment()}
    path = out / f"spa-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"rounds": [(r["round"], r["eval_accuracy"], r["eval_reward_accuracy"]) for r in rounds],
                      "dpo_seed_same_total_steps": baseline}, indent=2))
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
